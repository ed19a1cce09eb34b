"""LPIPS (paper Sec. 4, Table 2; Zhang et al., CVPR 2018): learned perceptual image patch similarity.

A faithful re-implementation of the `lpips` package, version 0.1, "net-lin" model (the one the
official bilayer code evaluates with, on VGG16 by default):

    d(x, y) = sum_l mean_{h,w} w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2

where f_l are the backbone's five ReLU maps (channel-normalized with eps 1e-10), w_l the
non-negative linear heads calibrated on human judgments, and x, y images in [-1, 1] shifted and
scaled by the package's `ScalingLayer` (ImageNet statistics expressed in [-1, 1]).

Weights, nothing downloaded:
  * linear heads: read from the installed `lpips` package's `weights/v0.1/{vgg,alex}.pth` (the
    package is located, never imported: it imports torchvision, which is unusable here);
  * backbone: a user-given torchvision-format state dict of ImageNet VGG16 (`vgg16-397923af.pth`)
    or AlexNet (`alexnet-owt-7be5be79.pth`); only the `features.N.*` keys are read.
Without either, `load_lpips` raises `MetricUnavailable` with the reason; a random network is never
used in its place.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from bilayer.errors import InputError, MetricUnavailable
from bilayer.perceptual.weights import load_into, read_state_dict

LPIPSNet = Literal["vgg", "alex"]
LPIPS_VERSION = "0.1"
EPS = 1e-10
# lpips.ScalingLayer: (x - shift) / scale maps [-1, 1] to ImageNet-normalized input.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> tuple[nn.Sequential, list[int], list[int]]:
    """torchvision `vgg16().features` up to relu5_3; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
    layers: list[nn.Module] = []
    cin = 3
    for stage, (cout, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if stage:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(convs):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
    return nn.Sequential(*layers), [3, 8, 15, 22, 29], [64, 128, 256, 512, 512]


def alexnet_features() -> tuple[nn.Sequential, list[int], list[int]]:
    """torchvision `alexnet().features` up to relu5; taps after each of the five convolutions."""
    layers = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )
    return layers, [1, 4, 7, 9, 11], [64, 192, 384, 256, 256]


BACKBONES = {"vgg": vgg16_features, "alex": alexnet_features}


class LPIPS(nn.Module):
    """LPIPS v0.1 net-lin. `features.N.*` keys follow torchvision; `lins.l.weight` are the heads."""

    def __init__(self, net: LPIPSNet = "vgg"):
        super().__init__()
        if net not in BACKBONES:
            raise InputError(f"lpips: unknown backbone {net!r}, expected one of {sorted(BACKBONES)}")
        self.net = net
        self.features, self.taps, channels = BACKBONES[net]()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(SHIFT)[:, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE)[:, None, None], persistent=False)

    def tapped(self, image: Tensor) -> list[Tensor]:
        """image (B, 3, H, W) in [-1, 1] -> five channel-normalized maps (B, C_l, H_l, W_l)."""
        x = (image - self.shift) / self.scale
        maps = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                maps.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + EPS))
        return maps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: (B, 3, H, W) in [-1, 1] (clamped) -> (B,) distances, 0 for identical images."""
        fp, ft = self.tapped(pred.clamp(-1, 1)), self.tapped(target.clamp(-1, 1))
        # per layer: (B, C, h, w) squared difference -> 1x1 head -> (B, 1, h, w) -> spatial mean (B,)
        return sum(lin((a - b) ** 2).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lins, fp, ft, strict=True))


def lpips_heads_file(net: LPIPSNet) -> Path:
    """The linear-head file shipped by the installed `lpips` package (located without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("the `lpips` package (linear heads) is not installed: "
                                "pip install --no-deps lpips==0.1.4 (as `make setup` does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"
    if not path.is_file():
        raise MetricUnavailable(f"{path}: LPIPS v{LPIPS_VERSION} heads for {net!r} not found in the lpips package")
    return path


def load_lpips(net: LPIPSNet, backbone: str | Path | None) -> LPIPS:
    """LPIPS with the package's heads and the backbone weights in `backbone` (torchvision format).

    Raises `MetricUnavailable` when the backbone file is not given or the heads are not installed,
    and `InputError` for a given file that is missing or does not fit the backbone.
    """
    if backbone is None:
        name = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}[net]
        raise MetricUnavailable(
            f"no ImageNet {net} backbone weights given (torchvision's {name}; "
            "not downloadable offline): pass --lpips-backbone FILE"
        )
    model = LPIPS(net)
    heads = read_state_dict(lpips_heads_file(net))  # keys lin{l}.model.1.weight
    weights = {f"lins.{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(len(model.lins))}
    weights.update({k: v for k, v in read_state_dict(backbone).items() if k.startswith("features.")})
    return load_into(model, weights, backbone)
