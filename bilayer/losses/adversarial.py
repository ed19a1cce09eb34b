"""Relativistic hinge PatchGAN loss and feature matching (Sec. 3.2; App. A.1, Eqs. 10-14).

Scores are PatchGAN matrices (B, 1, H_s, W_s). The relativistic average of Eqs. 10-11 subtracts the
mini-batch mean of the *opposite* set's score matrix, position by position (the paper's
1/N sum over the batch; the released code averaged over the patches as well). The losses are
computed in float32, also from the bfloat16 / float16 scores of an autocast step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bilayer.losses.reconstruction import mean_abs


def relativistic_scores(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """Eqs. 10-11: s = D(x) - mean_n D(x_hat_n), s_hat = D(x_hat) - mean_n D(x_n).

    real, fake: (B, 1, H_s, W_s) raw scores -> relativistic scores of the same shapes, float32.
    """
    real, fake = real.float(), fake.float()
    return real - fake.mean(0, keepdim=True), fake - real.mean(0, keepdim=True)


def discriminator_hinge(real: Tensor, fake: Tensor) -> Tensor:
    """Eq. 12, L_adv^D: mean over patches and batch of max(0, 1 - s) + max(0, 1 + s_hat)."""
    s_real, s_fake = relativistic_scores(real, fake)
    return torch.relu(1 - s_real).mean() + torch.relu(1 + s_fake).mean()


def generator_hinge(real: Tensor, fake: Tensor) -> Tensor:
    """Eq. 13, L_adv^G: the labels of Eq. 12 swapped. `real` should be detached by the caller."""
    s_real, s_fake = relativistic_scores(real, fake)
    return torch.relu(1 + s_real).mean() + torch.relu(1 - s_fake).mean()


def feature_matching(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Eq. 14, L_FM: (1/K) sum_k mean |f_hat_k - SG(f_k)| over D's per-block features.

    The norm is averaged over all elements (channels too), as in the released code whose loss
    weights the paper reports.
    """
    return torch.stack([mean_abs(f - r.detach()) for r, f in zip(real, fake, strict=True)]).mean()
