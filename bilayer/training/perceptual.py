"""The perceptual networks named by the run config, wrapped for `bilayer.losses.perceptual_l1`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.losses import LossWeights
from bilayer.perceptual import DlibFaceResNet, build_perceptual, face_chip
from bilayer.perceptual.dlib_resnet import CHIP_SIZE
from bilayer.training.config import PerceptualConfig


class FeatureNet(nn.Module):
    """(image, keypoints) -> feature maps for any perceptual net. dlib's face ResNet aligns a face
    chip first, or with `whole_frame` sees the whole image resized to its 150x150 input. The chip's
    alignment (a least-squares fit and the sampling grid, in pixels) is computed in float32 also in
    an autocast step: bfloat16 pixel coordinates would be off by up to a pixel."""

    def __init__(self, net: nn.Module, whole_frame: bool = False):
        super().__init__()
        self.net, self.whole_frame = net, whole_frame

    def forward(self, image: Tensor, keypoints: Tensor) -> list[Tensor]:
        if not isinstance(self.net, DlibFaceResNet):
            return self.net(image)
        if self.whole_frame:  # (B, 3, H, W) -> (B, 3, 150, 150)
            return self.net(F.interpolate(image, size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear")).features
        with torch.autocast(image.device.type, enabled=False):
            chip = face_chip(image.float(), keypoints.float())
        return self.net(chip).features


def perceptual_nets(cfg: PerceptualConfig, weights: LossWeights) -> tuple[FeatureNet | None, FeatureNet | None, dict[str, str]]:
    """(ImageNet net or None, face net or None, {"imagenet": ..., "face": ...} status lines).

    A net is loaded only when it is configured and its loss weight is non-zero.
    """
    nets: dict[str, FeatureNet | None] = {}
    status: dict[str, str] = {}
    for term, name, path, weight, eq in (
        ("imagenet", cfg.imagenet, cfg.imagenet_weights, weights.imagenet, 4),
        ("face", cfg.face, cfg.face_weights, weights.face, 5),
    ):
        nets[term] = None
        if name == "none":
            status[term] = f"off (perceptual.{term} is none): Eq. {eq} is not optimized"
        elif not weight:
            status[term] = f"off (loss.{term} is 0): Eq. {eq} is not optimized"
        else:
            whole_frame = name == "dlib_frame"  # dlib's face ResNet on the whole frame
            nets[term] = FeatureNet(build_perceptual("dlib_face" if whole_frame else name, path), whole_frame)
            stand_in = ", dlib's face ResNet on the whole frame: a stand-in for ImageNet VGG19" if whole_frame else ""
            status[term] = f"{name} ({path or 'bundled weights'}){stand_in}"
    return nets["imagenet"], nets["face"], status
