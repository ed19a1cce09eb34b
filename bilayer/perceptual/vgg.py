"""VGG feature extractors for the perceptual losses (Sec. 3.2, Eqs. 4-5): ImageNet VGG19 and VGGFace.

One builder for both layouts. Modules keep torchvision's `features.N.weight|bias` key layout (N =
index in torchvision's `vgg19().features` / `vgg16().features`) and stop at relu5_1. They return
the five maps of the official bilayer losses: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
(torchvision indices 1, 6, 11, 20, 29 for VGG19 and 1, 6, 11, 18, 25 for VGG16). As in the official
code, max pooling is replaced by 2x2 average pooling by default (`pooling="max"` keeps it).

Weights come from user files (nothing is downloaded), see docs/perceptual.md:
  * VGG19: torchvision's ImageNet `vgg19-dcbb9e9d.pth` (any `features.N` VGG19 state dict);
    input RGB in [0, 1] normalized by the ImageNet mean/std.
  * VGGFace (VGG16): Caffe convention, BGR in [0, 255] minus the VGG-Face mean (93.594, 104.762,
    129.186). Either a torchvision-layout VGG16 state dict whose conv1_1 takes BGR, or the
    `vgg_face_dag.pth` conversion (keys `conv1_1.weight` ...; RGB input), whose conv1_1 input
    channels are flipped on load so both files compute the same function.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from bilayer.perceptual.weights import load_into, read_state_dict

Layout = Sequence[int | str]  # conv widths, "M" = 2x2 pooling (torchvision's cfgs "E" and "D")
VGG19: Layout = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
VGG16: Layout = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512)


@dataclass(frozen=True)
class InputSpec:
    """How an image in [-1, 1] is fed to a network: value range, channel order, mean, std."""

    scale: float  # pixel range: 1.0 -> [0, 1], 255.0 -> [0, 255]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool


IMAGENET = InputSpec(1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), bgr=False)
VGGFACE_CAFFE = InputSpec(255.0, (93.5940, 104.7624, 129.1863), (1.0, 1.0, 1.0), bgr=True)


class VGGFeatures(nn.Module):
    """VGG conv layers up to relu5_1; forward returns [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]."""

    def __init__(self, layout: Layout, spec: InputSpec, pooling: Literal["avg", "max"] = "avg"):
        super().__init__()
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        self.conv_names: dict[int, str] = {}  # torchvision index -> Caffe/MatConvNet name "convS_J"
        cin, stage, j = 3, 1, 0
        for v in layout:
            if v == "M":
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
                stage, j = stage + 1, 0
                continue
            j += 1
            self.conv_names[len(layers)] = f"conv{stage}_{j}"
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
            if j == 1:
                self.taps.append(len(layers) - 1)
            cin = int(v)
        self.features = nn.Sequential(*layers)
        self.bgr = spec.bgr
        self.scale = spec.scale
        self.register_buffer("mean", torch.tensor(spec.mean)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(spec.std)[:, None, None], persistent=False)

    def forward(self, image: Tensor) -> list[Tensor]:
        """image: (B, 3, H, W) RGB in [-1, 1] -> 5 maps (B, C_k, H / 2^k, W / 2^k), C = 64 ... 512."""
        x = (image + 1) * (self.scale / 2)
        if self.bgr:
            x = x.flip(1)
        x = (x - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats


def load_vgg19(path: str | Path, pooling: Literal["avg", "max"] = "avg") -> VGGFeatures:
    """ImageNet VGG19 (frozen) from a torchvision-format state dict, e.g. `vgg19-dcbb9e9d.pth`."""
    return load_into(VGGFeatures(VGG19, IMAGENET, pooling), read_state_dict(path), path)


def load_vggface(path: str | Path, pooling: Literal["avg", "max"] = "avg") -> VGGFeatures:
    """VGGFace VGG16 (frozen) from a torchvision-layout (BGR) or `vgg_face_dag.pth` (RGB) state dict."""
    net = VGGFeatures(VGG16, VGGFACE_CAFFE, pooling)
    state = read_state_dict(path)
    if "conv1_1.weight" in state:
        state = from_vgg_face_dag(state, net.conv_names)
    return load_into(net, state, path)


def from_vgg_face_dag(state: dict[str, Tensor], conv_names: dict[int, str]) -> dict[str, Tensor]:
    """Rename `convS_J.*` to `features.N.*` and flip conv1_1's input channels from RGB to BGR."""
    out = {}
    for index, name in conv_names.items():
        for kind in ("weight", "bias"):
            if f"{name}.{kind}" in state:
                out[f"features.{index}.{kind}"] = state[f"{name}.{kind}"]
    if "features.0.weight" in out:
        out["features.0.weight"] = out["features.0.weight"].flip(1)
    return out
