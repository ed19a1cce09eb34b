"""The loss object: weighted, named terms of the generator and discriminator phases.

Generator objective (Sec. 3.2, 3.4, 3.5):
    L_G = 0.5 L_adv^G + 10 L_FM + 10 L_pix + 10 L_IN + 0.01 L_face + w_reg(t) L_reg + 10 L_seg,
with w_reg(t) = 10 * 0.9^floor(t / 50) (Sec. 3.5). Discriminator: 0.5 L_adv^D (Eq. 12).

Masking (Sec. 3.4): the predicted mask, with the stop-gradient applied, blends the target, the
output, the LF layer and SG(LF) + HF into a black background before every image loss and before
D. The paper states it for the real images fed to D; the released code masks the generated images
the same way, so that background presence cannot tell real from fake. The mask head learns only
from L_seg.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bilayer.losses.adversarial import discriminator_hinge, feature_matching, generator_hinge
from bilayer.losses.perceptual import perceptual_l1
from bilayer.losses.reconstruction import mask_bce, pixel_l1, warp_regularizer
from bilayer.data.frame import Frame
from bilayer.nets import Rendered, apply_mask


@dataclass(frozen=True)
class LossWeights:
    """Sec. 3.5: 0.5 for the adversarial losses, 10 for the others, 0.01 for the face term."""

    adversarial: float = 0.5
    feature_matching: float = 10.0
    pixel: float = 10.0
    imagenet: float = 10.0  # VGG19 perceptual, Eq. 4
    face: float = 0.01  # face-recognition perceptual, Eq. 5
    warp: float = 10.0  # texture-mapping regularizer, Eq. 6/9, initial weight ...
    warp_decay: float = 0.9  # ... multiplied by this ...
    warp_decay_every: int = 50  # ... every this many iterations
    mask: float = 10.0  # segmentation BCE, Sec. 3.4

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {name} must be a finite number >= 0, got {value}")
        if not 0 < self.warp_decay <= 1:
            raise ValueError(f"warp_decay must be in (0, 1], got {self.warp_decay}")
        if self.warp_decay_every < 1:
            raise ValueError(f"warp_decay_every must be >= 1, got {self.warp_decay_every}")


def warp_weight(weights: LossWeights, iteration: int) -> float:
    """Weight of L_reg at 0-based `iteration`: warp * warp_decay^floor(iteration / warp_decay_every)."""
    return weights.warp * weights.warp_decay ** (iteration // weights.warp_decay_every)


@dataclass
class GeneratorLosses:
    terms: dict[str, Tensor]  # name -> weighted scalar; the phase loss is their sum
    real: Tensor  # (B, 3, H, W) masked target, what D sees as real
    fake: Tensor  # (B, 3, H, W) masked output, what D sees as fake (attached to the graph)


class Objective(nn.Module):
    """Holds the loss weights and the frozen perceptual networks (None = term inactive)."""

    def __init__(self, weights: LossWeights, imagenet: nn.Module | None = None, face: nn.Module | None = None):
        super().__init__()
        self.weights = weights
        self.imagenet = imagenet if weights.imagenet else None
        self.face = face if weights.face else None

    def generator(self, out: Rendered, target: Frame, discriminator: nn.Module, warp: float) -> GeneratorLosses:
        """Weighted L_G terms for the rendered target frame; `warp` is the current L_reg weight."""
        w = self.weights
        m = out.mask.detach()  # SG(m_hat), Sec. 3.4
        real, fake = apply_mask(target.image, m), apply_mask(out.image, m)
        terms: dict[str, Tensor] = {}
        if w.adversarial or w.feature_matching:
            # Real and fake in one call so D's BatchNorm sees both (App. A.2).
            d = discriminator(torch.cat([real, fake]), torch.cat([target.landmark_image, target.landmark_image]))
            real_scores, fake_scores = d.scores.chunk(2)  # (B, 1, H_s, W_s) each
            if w.adversarial:
                terms["adversarial"] = w.adversarial * generator_hinge(real_scores.detach(), fake_scores)
            if w.feature_matching:
                real_feats, fake_feats = zip(*(f.chunk(2) for f in d.features))
                terms["feature_matching"] = w.feature_matching * feature_matching(list(real_feats), list(fake_feats))
        if w.pixel:
            terms["pixel"] = w.pixel * pixel_l1(apply_mask(out.lf, m), real)
        if self.imagenet is not None or self.face is not None:
            tilde = apply_mask(out.lf.detach() + out.hf, m)  # Eq. 3: SG(LF) + HF
            if self.imagenet is not None:
                terms["imagenet"] = w.imagenet * perceptual_l1(self.imagenet, tilde, real, target.keypoints)
            if self.face is not None:
                terms["face"] = w.face * perceptual_l1(self.face, tilde, real, target.keypoints)
        if warp:
            terms["warp"] = warp * warp_regularizer(out.warp_delta)
        if w.mask:
            terms["mask"] = w.mask * mask_bce(out.mask_logit, target.mask)
        return GeneratorLosses(terms, real, fake)

    def discriminator(self, discriminator: nn.Module, real: Tensor, fake: Tensor,
                      landmark_image: Tensor) -> dict[str, Tensor]:
        """Weighted L_adv^D (Eq. 12) on masked real and (detached) masked fake images."""
        d = discriminator(torch.cat([real, fake.detach()]), torch.cat([landmark_image, landmark_image]))
        real_scores, fake_scores = d.scores.chunk(2)
        return {"adversarial": self.weights.adversarial * discriminator_hinge(real_scores, fake_scores)}

