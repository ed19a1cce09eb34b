"""The per-frame network of one avatar as an ordinary static network (paper App. A.3).

"All ported models have spectral normalization removed, and adaptive parameters fixed and merged
into their base layers." `fold_generator` turns the inference generator G plus one avatar's cached
adaptive parameters into a `FrameNet` made only of Linear/Conv2d, LeakyReLU, per-channel affines,
transposed convs and one `grid_sample`. Every rewrite is exact algebra (outputs change by float
rounding only):

* spectral norm: each weight is read once as W / sigma (eval mode: stored u, v, no power step);
* (adaptive) BatchNorm with running ("standing") statistics is a per-channel affine; an affine
  that directly follows a linear map is merged into it: norm2 into conv1, and out_norm into the
  last block's conv2 and skip conv (it follows their sum);
* the adaptive 1x1 skip conv becomes a Conv2d and runs BEFORE nearest upsampling (the two commute
  for 1x1 kernels), and so does the LeakyReLU after conv1 (elementwise);
* conv3x3(nearest_up(z)) runs as a stride-2 transposed conv on z: each output phase of the
  upsampled grid sees only 2x2 distinct input pixels, so the 3x3 kernel collapses to summed taps
  of a 4x4 transposed kernel: 16 instead of 36 MACs per (C_in, C_out, input pixel);
* the three heads (LF RGB, warp offset, mask logit) become one conv with 6 outputs.

Norm1 of each block stays an elementwise affine: its input also feeds the skip conv unnormalized,
so it cannot move into the previous block's convs without dividing by gamma (not exact).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.metrics.complexity import counted_macs
from bilayer.nets import InferenceGenerator, warp_texture
from bilayer.nets.layers import (
    AdaptiveBatchNorm,
    AdaptiveConv1x1,
    AdaptiveModule,
    BatchNorm,
    Conv1x1,
    Params,
    sub_params,
)

#: conv3x3(nearest_up2(z)) along one axis as a stride-2 transposed conv with 4 taps: input row i
#: reaches output rows 2i-1 .. 2i+2 (tap t = row - 2i + 1) through the 3x3 kernel taps
#: [w2], [w1 + w2], [w0 + w1], [w0]. Shape (transposed tap, kernel tap).
UP_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def norm_affine(norm: AdaptiveModule, params: Params) -> tuple[Tensor, Tensor]:
    """An eval-mode (adaptive) BatchNorm as y = x * scale + shift; returns (C,), (C,)."""
    bn = norm.bn
    if isinstance(norm, BatchNorm):
        gamma, beta = bn.weight, bn.bias
    elif isinstance(norm, AdaptiveBatchNorm):
        p = params["affine"][0]  # (C, 2): gamma - 1 | beta
        gamma, beta = 1.0 + p[:, 0], p[:, 1]
    else:
        raise TypeError(f"cannot fold {type(norm).__name__}")
    scale = gamma * torch.rsqrt(bn.running_var + bn.eps)
    return scale, beta - bn.running_mean * scale


def skip_weights(skip: AdaptiveModule, params: Params) -> tuple[Tensor, Tensor]:
    """The (adaptive or plain) 1x1 skip conv as weight (C_out, C_in, 1, 1), bias (C_out,)."""
    if isinstance(skip, AdaptiveConv1x1):
        p = params["weight"][0]  # (C_out, C_in + 1): weight | bias
        return p[:, :-1, None, None], p[:, -1]
    if isinstance(skip, Conv1x1):
        return skip.conv.weight, skip.conv.bias
    raise TypeError(f"cannot fold {type(skip).__name__}")


def scale_out(weight: Tensor, bias: Tensor, scale: Tensor, shift: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Merge a per-output-channel affine that follows a linear map into the map."""
    return weight * scale.reshape(-1, *[1] * (weight.dim() - 1)), bias * scale + shift


def make_layer(layer: type[nn.Module], weight: Tensor, bias: Tensor, **kwargs) -> nn.Module:
    """A plain Linear / Conv2d / ConvTranspose2d holding the given (already folded) tensors."""
    if layer is nn.Linear:
        out = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    else:  # conv weights are (C_out, C_in, k, k), transposed conv weights (C_in, C_out, k, k)
        cin, cout = weight.shape[:2] if layer is nn.ConvTranspose2d else weight.shape[1::-1]
        out = layer(cin, cout, weight.shape[-1], device="meta", **kwargs)  # no random init to overwrite
    out.weight = nn.Parameter(weight.detach().clone(memory_format=torch.contiguous_format), requires_grad=False)
    out.bias = nn.Parameter(bias.detach().clone(memory_format=torch.contiguous_format), requires_grad=False)
    return out


def _cast(x: Tensor, like: Tensor) -> Tensor:
    """x in the dtype of `like` (a no-op, and no graph node, when they already agree)."""
    return x if x.dtype == like.dtype else x.to(like.dtype)


class Affine(nn.Module):
    """y = x * scale + shift per channel (a BatchNorm that could not be merged into a conv)."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class UpConv3x3(nn.Module):
    """conv3x3(nearest_up2(z)) + nearest_up2(residual), without materializing the upsampling.

    The conv of a nearest-upsampled map is a stride-2 transposed conv with a 4x4 kernel (the 3x3
    taps summed per output phase, `UP_TAPS`) on the low-resolution map: 16 instead of 36 MACs per
    (C_in, C_out, input pixel), and the output comes out interleaved. The residual is added to
    each 2x2 output phase by broadcasting.
    """

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        taps = UP_TAPS.to(weight)
        kernel = torch.einsum("tk,ockl,ul->cotu", taps, weight, taps)  # (C_in, C_out, 4, 4)
        self.conv = make_layer(nn.ConvTranspose2d, kernel, bias, stride=2, padding=1)

    def forward(self, z: Tensor, residual: Tensor) -> Tensor:
        """z: (B, C_in, s, s); residual: (B, C_out, s, s) -> (B, C_out, 2s, 2s)."""
        b, c, s, _ = residual.shape
        y = self.conv(z)  # (B, C_out, 2s, 2s), any memory format
        y.view(b, c, s, 2, s, 2).add_(residual[:, :, :, None, :, None])  # every 2x2 phase
        return y


class SubpixelUpConv3x3(nn.Module):
    """The same function as `UpConv3x3` as a 2x2 conv + pixel shuffle (the form ONNX Runtime runs
    fastest; its ConvTranspose goes through im2col/col2im).

    Output phase a of each axis reads low-res rows (i-1, i) for a = 0 (transposed taps 3, 1) and
    (i, i+1) for a = 1 (taps 2, 0). One 2x2 conv on z padded by 1 computes all four phases; phase
    a sits at window offset a, so storing it in shuffle slot 1 - a makes every phase land one
    pixel down-right of its place: the pixel-shuffled map cropped by 1 is the output.
    """

    SLOT_TAPS = torch.tensor([[2, 0], [3, 1]])  # shuffle slot -> transposed-kernel taps of its phase

    def __init__(self, up: UpConv3x3):
        super().__init__()
        w = up.conv.weight  # (C_in, C_out, 4, 4)
        taps = self.SLOT_TAPS
        kernel = w[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # (C_in, C_out, 2, 2, 2, 2)
        kernel = kernel.permute(1, 2, 3, 0, 4, 5).flatten(0, 2)  # (C_out * 4 slots, C_in, 2, 2)
        self.conv = make_layer(nn.Conv2d, kernel, up.conv.bias.repeat_interleave(4), padding=1)

    def forward(self, z: Tensor, residual: Tensor) -> Tensor:
        """z: (B, C_in, s, s); residual: (B, C_out, s, s) -> (B, C_out, 2s, 2s)."""
        s = z.shape[-1]
        y = F.pixel_shuffle(self.conv(z), 2)[:, :, 1:2 * s + 1, 1:2 * s + 1]
        return y + F.interpolate(residual, scale_factor=2.0, mode="nearest")


def subpixel_form(net: "FrameNet") -> "FrameNet":
    """`net` with `SubpixelUpConv3x3` upsampling convs (for ONNX export); every other layer is
    shared with `net`."""
    blocks = [FrameBlock(b.norm1, b.conv1, SubpixelUpConv3x3(b.conv2), b.skip, b.slope) for b in net.blocks]
    return FrameNet(net.mlp, blocks, net.head, (net.c0, net.s0), net.slope, net.grid0, net.texture,
                    net.align_corners).eval().requires_grad_(False)


class FrameBlock(nn.Module):
    """A folded upsampling block: affine-act -> conv1 (+norm2) -> act -> up-conv2 (+ skip, up)."""

    def __init__(self, norm1: Affine, conv1: nn.Conv2d, conv2: UpConv3x3, skip: nn.Conv2d, slope: float):
        super().__init__()
        self.norm1, self.conv1, self.conv2, self.skip = norm1, conv1, conv2, skip
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, s, s) -> (B, C_out, 2s, 2s)."""
        h = F.leaky_relu(self.norm1(x), self.slope, inplace=True)
        h = F.leaky_relu(self.conv1(h), self.slope, inplace=True)  # (B, C_out, s, s), norm2 merged into conv1
        return self.conv2(h, self.skip(x))


class FrameNet(nn.Module):
    """Keypoints -> synthesized frame and mask for ONE avatar (Eq. 1, Sec. 3.4), static layers only.

    `texture` is a buffer when baked in; `forward(keypoints, texture)` overrides it (the ONNX
    export with the texture as a second input). The MLP and blocks may be cast to a lower
    precision (bf16); the head, warp field and texture lookup can stay in float32, since the
    sampling grid needs sub-pixel precision (each stage runs in its weights' dtype).
    """

    def __init__(self, mlp: nn.Sequential, blocks: list[FrameBlock], head: nn.Conv2d, input_shape: tuple[int, int],
                 slope: float, grid0: Tensor, texture: Tensor | None, align_corners: bool = False):
        super().__init__()
        self.mlp, self.blocks, self.head = mlp, nn.Sequential(*blocks), head
        self.c0, self.s0 = input_shape
        self.slope, self.align_corners = slope, align_corners
        self.register_buffer("grid0", grid0.clone())  # (1, H, W, 2) identity sampling grid
        self.register_buffer("texture", None if texture is None else texture.detach().clone())

    @property
    def image_size(self) -> int:
        return self.grid0.shape[1]

    def signature(self) -> tuple:
        """Everything but the weights' values: nets with equal signatures trace to the same graph."""
        layers = tuple((name, tuple(t.shape), t.dtype) for name, t in self.state_dict().items())
        kinds = tuple(type(m).__name__ for m in self.modules())
        return self.c0, self.s0, self.slope, self.align_corners, layers, kinds

    def forward(self, keypoints: Tensor, texture: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """keypoints: (B, 68, 2) in [-1, 1]; texture: (1, 3, H, W) unless baked in.

        Returns image (B, 3, H, W) = LF + warped texture, and mask (B, 1, H, W) in [0, 1].
        """
        texture = self.texture if texture is None else texture
        b = keypoints.shape[0]
        x = self.mlp(_cast(keypoints.reshape(b, -1), self.mlp[0].weight))
        x = self.blocks(x.reshape(b, self.c0, self.s0, self.s0))  # (B, C_K, H, W), the MLP's dtype
        h = self.head(_cast(F.leaky_relu(x, self.slope, inplace=True), self.head.weight))  # (B, 6, H, W)
        h = _cast(h.contiguous(), texture)  # channels_last -> planar: per-channel ops below vectorize
        t = torch.tanh(h[:, :5])  # LF RGB | warp offset
        grid = self.grid0 + t[:, 3:].permute(0, 2, 3, 1)  # (B, H, W, 2), Eq. 9
        texture = texture.expand(b, -1, -1, -1)  # expanded here: ONNX keeps a dynamic batch
        hf = warp_texture(texture, grid, self.align_corners)
        return t[:, :3] + hf, torch.sigmoid(h[:, 5:])

    @torch.no_grad()
    def macs(self) -> int:
        """MACs of one frame (batch 1) as executed, counted like `bilayer.metrics.complexity`."""
        keypoints = self.grid0.new_zeros(1, 68, 2)
        texture = None if self.texture is not None else self.grid0.new_zeros(1, 3, self.image_size, self.image_size)
        return sum(counted_macs(lambda: self(keypoints, texture), self.image_size))


@torch.no_grad()
def fold_generator(gen: InferenceGenerator, params: list[Params], texture: Tensor | None = None,
                   align_corners: bool = False) -> FrameNet:
    """Merge one avatar's adaptive parameters (batch 1) into a static `FrameNet` (App. A.3).

    gen must be in eval mode (BatchNorm uses its running/standing statistics, spectral norm does
    no power iteration). texture: (1, 3, H, W) to bake in, or None to pass it per call;
    align_corners: the model's texture sampling (`ModelConfig.align_corners`).
    """
    if gen.training:
        raise ValueError("fold_generator needs the generator in eval mode")
    if any(t.shape[0] != 1 for p in params for t in p.values()):
        raise ValueError("fold_generator folds the parameters of one avatar (batch 1)")
    linears = [m for m in gen.mlp if isinstance(m, nn.Linear)]
    slope = gen.decoder.act.negative_slope
    mlp_layers: list[nn.Module] = []
    for i, lin in enumerate(linears):
        mlp_layers.append(make_layer(nn.Linear, lin.weight, lin.bias))
        if i < len(linears) - 1:
            mlp_layers.append(nn.LeakyReLU(slope))

    blocks, last = [], len(gen.decoder.blocks) - 1
    for i, (block, p) in enumerate(zip(gen.decoder.blocks, params)):
        if block.upsample_first or not isinstance(block.bias1, nn.Identity):
            raise TypeError("fold_generator expects the inference generator's efficient blocks")
        norm1 = Affine(*norm_affine(block.norm1, sub_params(p, "norm1")))
        w1, b1 = scale_out(block.conv1.weight, block.conv1.bias, *norm_affine(block.norm2, sub_params(p, "norm2")))
        w2, b2 = block.conv2.weight, block.conv2.bias
        ws, bs = skip_weights(block.skip, sub_params(p, "skip"))
        if i == last:  # out_norm(conv2(.) + skip(.)): scale both, shift once
            scale, shift = norm_affine(gen.decoder.out_norm, sub_params(p, "out_norm"))
            w2, b2 = scale_out(w2, b2, scale, shift)
            ws, bs = scale_out(ws, bs, scale)
        blocks.append(FrameBlock(norm1, make_layer(nn.Conv2d, w1, b1, padding=1), UpConv3x3(w2, b2),
                                 make_layer(nn.Conv2d, ws, bs), slope))

    heads = (gen.head_lf, gen.head_warp, gen.head_mask)
    head = make_layer(nn.Conv2d, torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]), padding=1)
    net = FrameNet(nn.Sequential(*mlp_layers), blocks, head, (gen.c0, gen.s0), slope, gen.grid0, texture, align_corners)
    return net.eval().requires_grad_(False)
