"""Shared layers of the bi-layer networks (paper Sec. 3.5, App. A.2).

All networks are built from pre-activation residual blocks with LeakyReLU; every conv and linear
layer carries spectral normalization. Adaptive layers own no identity-specific weights: their
per-avatar parameters arrive in `forward` as a mapping produced once by a `Projector`
(`bilayer.nets.projector`), so the per-frame path only reads cached tensors.

Adaptive layer parameter layout (one row per output channel, as in the matrix decomposition of A.2):
  * adaptive 1x1 conv  C_in -> C_out : (B, C_out, C_in + 1)   weights | bias
  * adaptive BatchNorm C             : (B, C, 2)              gamma - 1 | beta
  * AdaSPADE C                       : two adaptive 1x1 convs C -> C ("scale", "shift")
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

#: Per-layer adaptive parameters: local name -> (B, rows, cols) tensor.
Params = Mapping[str, Tensor]
#: Shapes a layer needs: local name -> (rows, cols).
Specs = dict[str, tuple[int, int]]


def apply_mask(image: Tensor, mask: Tensor, background: float = -1.0) -> Tensor:
    """Blend `image` (B, [N,] 3, H, W) into a constant `background` (-1: black, the foreground the
    networks see, the losses compare and D judges, Sec. 3.4) with `mask` (B, [N,] 1, H, W) in [0, 1]."""
    return image * mask + background * (1 - mask)


def with_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap a conv/linear layer's weight in spectral normalization (Sec. 3.5)."""
    return spectral_norm(module) if enabled else module


def conv(cin: int, cout: int, k: int = 3, *, sn: bool = True, bias: bool = True) -> nn.Module:
    """`k x k` convolution with 'same' padding."""
    return with_sn(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), sn)


def linear(cin: int, cout: int, *, sn: bool = True) -> nn.Module:
    return with_sn(nn.Linear(cin, cout), sn)


def sub_params(params: Params, prefix: str) -> dict[str, Tensor]:
    """The entries of `params` under `prefix.` with the prefix stripped."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


def prefixed(prefix: str, specs: Specs) -> Specs:
    return {f"{prefix}.{k}": v for k, v in specs.items()}


def adaptive_conv1x1(x: Tensor, p: Tensor) -> Tensor:
    """Per-sample 1x1 convolution. x: (B|1, C_in, H, W); p: (B|1, C_out, C_in + 1). A
    channels-last x (the runtime's layout) is multiplied as its (B, H*W, C_in) rows, without
    copies, and the result is channels-last too."""
    b, c, h, w = x.shape
    weight, bias = p[..., :-1], p[..., -1:]  # (B, C_out, C_in), (B, C_out, 1)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view of the (B, H, W, C) memory
        out = torch.matmul(rows, weight.transpose(1, 2)) + bias.transpose(1, 2)  # (B, H*W, C_out)
        return out.reshape(out.shape[0], h, w, -1).permute(0, 3, 1, 2)
    out = torch.matmul(weight, x.reshape(b, c, h * w)) + bias  # (B, C_out, H*W)
    return out.reshape(out.shape[0], -1, h, w)


class AdaptiveModule(nn.Module):
    """A layer taking (x, params); `specs()` declares the adaptive tensors it needs."""

    def specs(self) -> Specs:
        return {}


class AdaptiveConv1x1(AdaptiveModule):
    """1x1 conv whose weights and bias are predicted from the embeddings (Sec. 3.5)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin, self.cout = cin, cout

    def specs(self) -> Specs:
        return {"weight": (self.cout, self.cin + 1)}

    def forward(self, x: Tensor, params: Params) -> Tensor:
        return adaptive_conv1x1(x, params["weight"])


class Conv1x1(AdaptiveModule):
    """Plain (non-adaptive) 1x1 conv with the adaptive call signature (baseline skips)."""

    def __init__(self, cin: int, cout: int, *, sn: bool = True):
        super().__init__()
        self.conv = conv(cin, cout, 1, sn=sn)

    def forward(self, x: Tensor, params: Params) -> Tensor:
        return self.conv(x)


class BatchNorm(AdaptiveModule):
    """Ordinary BatchNorm (the first norm of each generator, marked with a star in Figs. 10-11)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)

    def forward(self, x: Tensor, params: Params) -> Tensor:
        return self.bn(x)


class AdaptiveBatchNorm(AdaptiveModule):
    """BatchNorm whose affine (gamma, beta) are predicted per avatar [7]."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False)

    def specs(self) -> Specs:
        return {"affine": (self.channels, 2)}

    def forward(self, x: Tensor, params: Params) -> Tensor:
        p = params["affine"]  # (B, C, 2)
        gamma = 1.0 + p[..., 0, None, None]  # (B, C, 1, 1)
        beta = p[..., 1, None, None]
        return self.bn(x) * gamma + beta


class AdaSPADE(AdaptiveModule):
    """Adaptive SPADE (Sec. 3.5): BatchNorm modulated by pixelwise scale/shift maps.

    The maps are computed from a learned feature tensor (a model parameter of the layer's spatial
    size, not an input from another network) by two adaptive 1x1 convs predicted per avatar.
    """

    def __init__(self, channels: int, size: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False)
        self.features = nn.Parameter(torch.empty(1, channels, size, size))
        nn.init.kaiming_uniform_(self.features, a=math.sqrt(5))

    def specs(self) -> Specs:
        c = self.channels
        return {"scale": (c, c + 1), "shift": (c, c + 1)}

    def forward(self, x: Tensor, params: Params) -> Tensor:
        scale = 1.0 + adaptive_conv1x1(self.features, params["scale"])  # (B, C, H, W)
        shift = adaptive_conv1x1(self.features, params["shift"])
        return self.bn(x) * scale + shift


class PixelwiseBias(nn.Module):
    """A learned per-pixel bias map (the baseline's replacement for AdaSPADE, Table 1)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, size, size))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


NormFactory = Callable[[int, int], AdaptiveModule]  # (channels, spatial size) -> norm
SkipFactory = Callable[[int, int], AdaptiveModule]  # (in, out channels) -> 1x1 conv


class UpBlock(nn.Module):
    """Pre-activation residual upsampling block of the generators (Figs. 10-11).

    `upsample_first=True` (texture generator): norm-act-up-conv-norm-act-conv.
    `upsample_first=False` (inference generator, "efficient" block of Fig. 11): the first conv
    runs at the input resolution and nearest upsampling follows it, halving the block's MACs.
    Skip: nearest upsampling then a 1x1 conv (adaptive by default). The first conv changes the
    channel count (A.2).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        size: int,
        norm1: AdaptiveModule,
        norm2: AdaptiveModule,
        skip: AdaptiveModule,
        *,
        upsample_first: bool,
        slope: float,
        sn: bool,
        pixel_bias: bool = False,
    ):
        super().__init__()
        self.upsample_first = upsample_first
        self.norm1, self.norm2, self.skip = norm1, norm2, skip
        self.conv1 = conv(cin, cout, 3, sn=sn, bias=not pixel_bias)
        self.conv2 = conv(cout, cout, 3, sn=sn, bias=not pixel_bias)
        out_size = 2 * size
        conv1_size = out_size if upsample_first else size
        self.bias1 = PixelwiseBias(cout, conv1_size) if pixel_bias else nn.Identity()
        self.bias2 = PixelwiseBias(cout, out_size) if pixel_bias else nn.Identity()
        self.act = nn.LeakyReLU(slope)

    def specs(self) -> Specs:
        return {
            **prefixed("norm1", self.norm1.specs()),
            **prefixed("norm2", self.norm2.specs()),
            **prefixed("skip", self.skip.specs()),
        }

    def forward(self, x: Tensor, params: Params) -> Tensor:
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
        h = self.act(self.norm1(x, sub_params(params, "norm1")))  # (B, C_in, s, s)
        if self.upsample_first:
            h = up(h)
        h = self.bias1(self.conv1(h))  # (B, C_out, 2s or s, ...)
        if not self.upsample_first:
            h = up(h)
        h = self.act(self.norm2(h, sub_params(params, "norm2")))  # (B, C_out, 2s, 2s)
        h = self.bias2(self.conv2(h))
        return h + self.skip(up(x), sub_params(params, "skip"))


class ResBlock(nn.Module):
    """Pre-activation residual block at constant or halved resolution (embedder, D, updater).

    norm-act-conv-norm-act-conv (+ average pooling when `down`). The skip has a 1x1 conv only
    when the channel count or resolution changes (Fig. 12). `features` (the input of the second
    conv, i.e. after the second nonlinearity) feed D's feature matching (Fig. 13).
    """

    def __init__(self, cin: int, cout: int, *, down: bool = False, norm: bool = False, slope: float = 0.2,
                 sn: bool = True, eps: float = 1e-5):
        super().__init__()
        self.down = down
        make_norm = (lambda c: nn.BatchNorm2d(c, eps=eps)) if norm else (lambda c: nn.Identity())
        self.norm1, self.norm2 = make_norm(cin), make_norm(cout)
        self.conv1 = conv(cin, cout, 3, sn=sn)
        self.conv2 = conv(cout, cout, 3, sn=sn)
        self.skip = conv(cin, cout, 1, sn=sn) if (cin != cout or down) else nn.Identity()
        self.act = nn.LeakyReLU(slope)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv1(self.act(self.norm1(x)))
        feats = self.act(self.norm2(h))  # (B, C_out, H, W)
        h = self.conv2(feats)
        s = self.skip(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s, feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


class UpResBlock(nn.Module):
    """Non-adaptive upsampling residual block without normalization (texture updater, Fig. 14)."""

    def __init__(self, cin: int, cout: int, *, slope: float, sn: bool):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, sn=sn)
        self.conv2 = conv(cout, cout, 3, sn=sn)
        self.skip = conv(cin, cout, 1, sn=sn)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv2(self.act(self.conv1(self.act(x))))
        return h + self.skip(x)


class AdaptiveDecoder(nn.Module):
    """The stack shared by both generators: K upsampling blocks, an output norm and activation.

    Block k reads the adaptive parameters predicted from embedding k; the output norm belongs to
    the last block's group (it is modulated by the last embedding).
    """

    def __init__(
        self,
        channels: list[int],
        input_size: int,
        make_norm: NormFactory,
        make_skip: SkipFactory,
        *,
        upsample_first: bool,
        slope: float,
        sn: bool,
        eps: float,
        pixel_bias: bool = False,
    ):
        super().__init__()
        self.blocks = nn.ModuleList()
        size = input_size
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            norm1 = BatchNorm(cin, eps) if i == 0 else make_norm(cin, size)
            self.blocks.append(
                UpBlock(cin, cout, size, norm1, make_norm(cout, 2 * size), make_skip(cin, cout),
                        upsample_first=upsample_first, slope=slope, sn=sn, pixel_bias=pixel_bias)
            )
            size *= 2
        self.out_norm = make_norm(channels[-1], size)
        self.act = nn.LeakyReLU(slope)

    def block_specs(self) -> list[Specs]:
        specs = [block.specs() for block in self.blocks]
        specs[-1] = {**specs[-1], **prefixed("out_norm", self.out_norm.specs())}
        return specs

    def decode(self, x: Tensor, params: list[Params]) -> Tensor:
        """x: (B, C_0, s, s) -> features (B, C_K, s * 2^K, s * 2^K)."""
        for block, p in zip(self.blocks, params):
            x = block(x, p)
        return self.act(self.out_norm(x, sub_params(params[-1], "out_norm")))


def make_skip_factory(*, adaptive: bool, sn: bool) -> SkipFactory:
    if adaptive:
        return AdaptiveConv1x1
    return lambda cin, cout: Conv1x1(cin, cout, sn=sn)
