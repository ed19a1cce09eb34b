"""The perceptual networks named by the run config, wrapped for `bilayer.losses.perceptual_l1`."""
from __future__ import annotations

from torch import Tensor, nn

from bilayer.losses import LossWeights
from bilayer.perceptual import DlibFaceResNet, build_perceptual
from bilayer.training.config import PerceptualConfig


class FeatureNet(nn.Module):
    """(image, keypoints) -> feature maps for any perceptual net; dlib's aligns a face chip first."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, keypoints: Tensor) -> list[Tensor]:
        if isinstance(self.net, DlibFaceResNet):
            return self.net(image, keypoints).features
        return self.net(image)


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
            nets[term] = FeatureNet(build_perceptual(name, path))
            status[term] = f"{name} ({path or 'bundled weights'})"
    return nets["imagenet"], nets["face"], status
