"""Frozen perceptual networks for the losses of Sec. 3.2 (Eqs. 4-5) and the CSIM metric.

`build_perceptual(name, weights_path)` is the one entry point the run config uses:

  * "vgg19"     ImageNet VGG19, `VGGFeatures`: image (B, 3, H, W) in [-1, 1] -> 5 feature maps.
                Needs a user file (torchvision's `vgg19-dcbb9e9d.pth`).
  * "vggface"   VGGFace VGG16, same interface. Needs a user file (`vgg_face_dag.pth` or a
                torchvision-layout Caffe conversion).
  * "dlib_face" dlib's face-recognition ResNet, `DlibFaceResNet`: (image, keypoints) ->
                `FaceDescriptor(embedding (B, 128), features [5 maps])`. Weights ship with bilayer.

A configured weight file that is missing or malformed raises `InputError`; a random network is
never returned.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from torch import nn

from bilayer.assets import DLIB_FACE_RESNET
from bilayer.errors import InputError
from bilayer.perceptual.dlib_resnet import (
    DlibFaceResNet,
    FaceDescriptor,
    face_chip,
    load_dlib_face_resnet,
)
from bilayer.perceptual.vgg import VGGFeatures, load_vgg19, load_vggface

PerceptualName = Literal["vgg19", "vggface", "dlib_face"]

_LOADERS: dict[str, Callable[[Path], nn.Module]] = {
    "vgg19": load_vgg19,
    "vggface": load_vggface,
    "dlib_face": load_dlib_face_resnet,
}
_DEFAULTS: dict[str, Path] = {"dlib_face": DLIB_FACE_RESNET}
_WHERE = {
    "vgg19": "torchvision's ImageNet vgg19-dcbb9e9d.pth",
    "vggface": "VGG-Face weights, e.g. vgg_face_dag.pth",
}


def build_perceptual(name: PerceptualName, weights_path: str | Path | None = None) -> nn.Module:
    """A frozen (eval, no parameter grads) perceptual network loaded from `weights_path`.

    Only "dlib_face" has a bundled default; the VGGs need a file (see docs/perceptual.md).
    """
    if name not in _LOADERS:
        raise InputError(f"perceptual net {name!r}: unknown, expected one of {sorted(_LOADERS)}")
    path = Path(weights_path) if weights_path is not None else _DEFAULTS.get(name)
    if path is None:
        raise InputError(f"perceptual net {name!r}: no weight file configured (needs {_WHERE[name]})")
    return _LOADERS[name](path)


__all__ = [
    "DlibFaceResNet", "FaceDescriptor", "PerceptualName", "VGGFeatures",
    "build_perceptual", "face_chip", "load_dlib_face_resnet", "load_vgg19", "load_vggface",
]
