"""The forward half of each training phase (EDM-style), one `nn.Module` per phase.

Each phase is a module so that DistributedDataParallel can wrap it: its `forward` runs the
networks and the loss object and returns a dict with the named loss terms. The training loop
toggles `requires_grad_` so that only the phase's own networks receive gradients.

* Base stage, generator phase (Sec. 3.1-3.2): E -> G_tex, G -> LF + warped texture, L_G; with
  `joint`, G_upd's M steps refine the texture in between and train with the rest (Sec. 3.3).
* Updater stage, generator phase (Sec. 3.3): frozen base model, M unrolled LGD steps of G_upd
  guided by the SOURCE frame (Eq. 7), then L_G of the enhanced TARGET frame (Eq. 8).
* Discriminator phase (both stages): L_adv^D on masked real and detached masked fake (Eq. 12).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bilayer.data.frame import Frame
from bilayer.losses import GeneratorLosses, Objective
from bilayer.nets import AvatarState, BilayerModel, Discriminator, Rendered


class PhaseResult(NamedTuple):
    """What a generator phase returns (a NamedTuple: DistributedDataParallel finds its tensors)."""

    losses: dict[str, Tensor]  # name -> weighted scalar; the phase loss is their sum
    real: Tensor  # (B, 3, H, W) masked target, detached: D's real input
    fake: Tensor  # (B, 3, H, W) masked output, detached: D's fake input
    visuals: dict[str, Tensor]  # detached images for the logs: lf, hf, texture, mask, output


def _result(losses: GeneratorLosses, out: Rendered, state: AvatarState) -> PhaseResult:
    visuals = {"lf": out.lf, "hf": out.hf, "texture": state.texture, "mask": out.mask, "output": out.image}
    return PhaseResult(losses.terms, losses.real.detach(), losses.fake.detach(),
                       {k: v.detach() for k, v in visuals.items()})


class BasePhase(nn.Module):
    """Stage 1 generator phase: trains E, G_tex and G (and G_upd with `joint`).

    With `joint` the texture is refined by the M LGD steps of Eq. 7 before the target is rendered
    (Eq. 8), as at inference: the target loss reaches G_upd through all M steps and E, G_tex and G
    through the refined texture, so G's warp learns to carry what the updater copies from the
    source to the target pose. The guiding gradients stay detached inputs (Fig. 3).
    """

    def __init__(self, model: BilayerModel, discriminator: Discriminator, objective: Objective, *, joint: bool = False):
        super().__init__()
        self.model, self.discriminator, self.objective, self.joint = model, discriminator, objective, joint

    def forward(self, source: Frame, target: Frame, warp: float) -> PhaseResult:
        state = self.model.initialize(source.image, source.landmark_image, source.mask)
        if self.joint:
            state = self.model.refine(state, source.keypoints, source.image)  # X_M(s), Eq. 7
        out = self.model.render(target.keypoints, state)
        return _result(self.objective.generator(out, target, self.discriminator, warp), out, state)


class UpdaterPhase(nn.Module):
    """Stage 2 generator phase: trains G_upd by back-propagating through all M LGD steps.

    The base objective without the terms that G_upd cannot change (G is frozen): L_pix (on the LF
    layer), L_seg (on the mask) and L_reg (on the warp).
    """

    def __init__(self, model: BilayerModel, discriminator: Discriminator, objective: Objective):
        super().__init__()
        self.model, self.discriminator = model, discriminator
        self.objective = Objective(replace(objective.weights, pixel=0.0, mask=0.0), objective.imagenet, objective.face)

    def forward(self, source: Frame, target: Frame) -> PhaseResult:
        with torch.no_grad():  # the base generators are frozen: no graph through them
            state = self.model.initialize(source.image, source.landmark_image, source.mask)
        state = self.model.refine(state, source.keypoints, source.image)  # X_M(s), Eq. 7
        out = self.model.render(target.keypoints, state)  # x_M(t), Eq. 8
        return _result(self.objective.generator(out, target, self.discriminator, 0.0), out, state)


class DiscriminatorPhase(nn.Module):
    """Both stages: trains D on L_adv^D."""

    def __init__(self, discriminator: Discriminator, objective: Objective):
        super().__init__()
        self.discriminator, self.objective = discriminator, objective

    def forward(self, real: Tensor, fake: Tensor, landmark_image: Tensor) -> dict[str, Tensor]:
        return self.objective.discriminator(self.discriminator, real, fake, landmark_image)
