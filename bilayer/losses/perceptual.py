"""Perceptual losses on SG(LF) + HF (Sec. 3.2, Eqs. 3-5).

A `PerceptualNet` maps images in [-1, 1] (and the target keypoints, which the face network uses to
align a face chip) to a list of K feature maps. Eq. 4 uses an ImageNet VGG19; Eq. 5 a
face-recognition network (VGGFace in the paper; bilayer ships dlib's face ResNet instead, see
`bilayer.perceptual`). The builders live in `bilayer.training.perceptual`.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from bilayer.losses.reconstruction import mean_abs


class PerceptualNet(Protocol):
    def __call__(self, image: Tensor, keypoints: Tensor) -> list[Tensor]:
        """image: (B, 3, H, W) in [-1, 1]; keypoints: (B, 68, 2) in [-1, 1] -> K feature maps."""
        ...


def perceptual_l1(net: PerceptualNet, fake: Tensor, real: Tensor, keypoints: Tensor) -> Tensor:
    """Eqs. 4-5: (1/K) sum_k mean |f_k(x_tilde) - f_k(x)| (real features without gradient)."""
    with torch.no_grad():
        real_feats = net(real, keypoints)
    fake_feats = net(fake, keypoints)
    return torch.stack([mean_abs(f - r) for f, r in zip(fake_feats, real_feats, strict=True)]).mean()
