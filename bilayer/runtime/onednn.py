"""The per-frame network on a CPU through oneDNN with prepacked weights and fused tails.

`FrameNet` in eager PyTorch hands every conv its weights in plain layout, so oneDNN reorders them
into its blocked layout on every call: at 4x4 .. 16x16 pixels that reorder costs more than the
conv. `OneDnnFrameNet` computes the same function with the internal oneDNN ops PyTorch's own
compiler (Inductor) uses on CPUs (`torch.ops.mkldnn`), and:

* packs each conv and transposed-conv weight ONCE, for the input size it will see;
* fuses each block's norm1 + LeakyReLU into one depthwise 1x1 conv with a LeakyReLU post-op (one
  pass over the map instead of an affine and an activation), and conv1's LeakyReLU into conv1;
* runs the last block's skip inside its transposed conv: the conv reads [h, skip(x)], and the
  skip channels reach every 2x2 output phase through identity taps at the kernel's centre (that IS
  nearest upsampling, `fold.UP_TAPS`), so the full-resolution map is written once, with the head's
  LeakyReLU as the conv's post-op instead of an add and an activation pass over it;
* adds each upsampled skip in memory order (a vectorized pass, not a broadcast over phases);
* applies one float32 tanh to all six head channels, the mask's sigmoid written as
  (tanh(m / 2) + 1) / 2 with the mask's weights halved;
* at bfloat16 also runs the head conv in bf16 (accumulated in fp32 by oneDNN): the warp offsets
  are rounded to 8 significant bits relative to their size (<= 0.25 px for a whole-image offset,
  far less for the small offsets of a face); the sampling grid, texture lookup and outputs are fp32.

Exact algebra like `fold`: float32 outputs equal the eager `FrameNet`'s to rounding
(`tests/test_runtime.py`). Only for CPUs whose PyTorch build has oneDNN (`supported`).
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from bilayer.nets import warp_texture
from bilayer.runtime.fold import FrameNet

CL = torch.channels_last
#: oneDNN post-ops: (name, scalars).
Post = tuple[str, list[float]]
NO_POST: Post = ("none", [])


def leaky(slope: float) -> Post:
    return "leaky_relu", [slope]


def supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this PyTorch build runs `OneDnnFrameNet` on `device` at `dtype` (CPU, oneDNN with
    its private conv ops; bf16 where oneDNN implements it for this CPU)."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018 (raises where the build lacks it)
        torch.ops.mkldnn._convolution_transpose_pointwise.default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedConv:
    """A stride-1 conv (dense or depthwise) with its weight packed once for `input_size`."""

    def __init__(self, weight: Tensor, bias: Tensor, input_size: tuple[int, int, int, int], dtype: torch.dtype,
                 *, groups: int = 1, post: Post = NO_POST):
        pad = weight.shape[-1] // 2
        self.padding, self.groups = [pad, pad], groups
        w = weight.detach().to(dtype).contiguous(memory_format=CL)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(w, self.padding, [1, 1], [1, 1], groups, list(input_size))
        self.bias = bias.detach().to(dtype).contiguous()
        self.post, self.scalars = post

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, [1, 1], [1, 1],
                                                       self.groups, self.post, self.scalars, "")


class PackedUpConv:
    """A stride-2 transposed conv with a 4x4 kernel and padding 1 (`fold.UpConv3x3`), packed once."""

    def __init__(self, weight: Tensor, bias: Tensor, input_size: tuple[int, int, int, int], dtype: torch.dtype,
                 *, post: Post = NO_POST):
        w = weight.detach().to(dtype).contiguous(memory_format=CL)  # (C_in, C_out, 4, 4)
        self.weight = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            w, [1, 1], [0, 0], [2, 2], [1, 1], 1, list(input_size))
        self.bias = bias.detach().to(dtype).contiguous()
        self.post, self.scalars = post

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, self.weight, self.bias, [1, 1], [0, 0], [2, 2], [1, 1], 1, self.post, self.scalars, "")


def with_upsampled_skip(weight: Tensor) -> Tensor:
    """(C, C_out, 4, 4) transposed-conv kernel -> (C + C_out, C_out, 4, 4): the extra input
    channels pass through unchanged to the 2x2 output phases of their pixel (nearest upsampling;
    taps 1 and 2 of each axis are the phases 2i and 2i + 1 of input pixel i)."""
    c_out = weight.shape[1]
    skip = weight.new_zeros(c_out, c_out, 4, 4)
    channel = torch.arange(c_out)
    for u, v in itertools.product((1, 2), (1, 2)):
        skip[channel, channel, u, v] = 1.0
    return torch.cat([weight, skip])


class OneDnnFrameNet:
    """`FrameNet` of one avatar (texture baked in) at float32 or bfloat16, as described above."""

    def __init__(self, net: FrameNet, dtype: torch.dtype):
        if net.texture is None:
            raise ValueError("OneDnnFrameNet needs the avatar's texture baked into the FrameNet")
        self.dtype = dtype
        self.mlp = nn.Sequential(*[_copy_linear(m, dtype) if isinstance(m, nn.Linear) else m for m in net.mlp])
        self.c0, self.s0 = net.c0, net.s0
        self.blocks = []
        size, last = net.s0, len(net.blocks) - 1
        for i, block in enumerate(net.blocks):
            c_in, c_out = block.conv1.in_channels, block.conv1.out_channels
            shape = (1, c_in, size, size)
            act = PackedConv(block.norm1.scale.reshape(c_in, 1, 1, 1), block.norm1.shift.reshape(c_in), shape, dtype,
                             groups=c_in, post=leaky(net.slope))
            conv1 = PackedConv(block.conv1.weight, block.conv1.bias, shape, dtype, post=leaky(net.slope))
            skip = PackedConv(block.skip.weight, block.skip.bias, shape, dtype)
            up = block.conv2.conv
            if i == last:  # [h, skip(x)] -> up-conv with the head's LeakyReLU
                up2 = PackedUpConv(with_upsampled_skip(up.weight), up.bias, (1, 2 * c_out, size, size), dtype,
                                   post=leaky(net.slope))
            else:
                up2 = PackedUpConv(up.weight, up.bias, (1, c_out, size, size), dtype)
            self.blocks.append((act, conv1, skip, up2))
            size *= 2
        # One tanh for all six channels: sigmoid(m) = (tanh(m / 2) + 1) / 2. Not as a post-op: on six
        # channels oneDNN's bf16 tanh post-op costs more than a float32 pass of its own.
        half = torch.tensor([1.0] * 5 + [0.5]).to(net.head.weight)
        self.head = PackedConv(net.head.weight * half[:, None, None, None], net.head.bias * half,
                               (1, net.head.in_channels, size, size), dtype)
        self.grid0, self.align_corners = net.grid0, net.align_corners
        self.texture = net.texture.contiguous(memory_format=CL)  # grid_sample reads it faster

    @torch.inference_mode()
    def __call__(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """keypoints (B, 68, 2) float32 -> image (B, 3, H, W) in [-1, 1], mask (B, 1, H, W), float32."""
        b = keypoints.shape[0]
        x = self.mlp(keypoints.reshape(b, -1).to(self.dtype))
        x = x.reshape(b, self.c0, self.s0, self.s0).contiguous(memory_format=CL)
        last = len(self.blocks) - 1
        for i, (act, conv1, skip, up2) in enumerate(self.blocks):
            h = conv1(act(x))  # (B, C_out, s, s), both LeakyReLUs fused
            r = skip(x)  # (B, C_out, s, s)
            if i == last:
                x = up2(torch.cat([h, r], 1))  # (B, C_out, 2s, 2s), skip upsampled inside, head's LeakyReLU applied
            else:
                x = up2(h)
                _add_upsampled(x, r)
        t = self.head(x).to(torch.float32, memory_format=torch.contiguous_format).tanh_()  # (B, 6, H, W), planar
        grid = self.grid0 + t[:, 3:5].permute(0, 2, 3, 1)  # (B, H, W, 2), Eq. 9
        hf = warp_texture(self.texture.expand(b, -1, -1, -1), grid, self.align_corners)
        return t[:, :3] + hf, t[:, 5:].add(1.0).mul_(0.5)  # LF + HF, mask


def _add_upsampled(x: Tensor, r: Tensor) -> None:
    """x += nearest_up(r) for channels-last x (B, C, 2s, 2s) and r (B, C, s, s), in their memory
    order: each row pair of x, as (B * s, 2, s, 2 * C), gets the row of r with each pixel's
    channels twice (both column phases), contiguous innermost, so the add vectorizes."""
    b, c, s = r.shape[0], r.shape[1], r.shape[2]
    rows = x.permute(0, 2, 3, 1).view(b * s, 2, s, 2 * c)
    skip = r.permute(0, 2, 3, 1).reshape(b * s, 1, s, 1, c).expand(b * s, 1, s, 2, c).reshape(b * s, 1, s, 2 * c)
    rows.add_(skip)


def _copy_linear(layer: nn.Linear, dtype: torch.dtype) -> nn.Linear:
    out = nn.Linear(layer.in_features, layer.out_features, dtype=dtype)
    out.load_state_dict(layer.state_dict())
    return out.requires_grad_(False)
