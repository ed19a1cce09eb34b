"""Pixel, warp-regularization and segmentation losses (Sec. 3.2, 3.4; Eq. 2, 9).

Norms are averaged over all elements (the 1/HW of the equations, channels included), matching the
released code for which the paper's loss weights were chosen.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pixel_l1(lf: Tensor, target: Tensor) -> Tensor:
    """Eq. 2, L_pix: mean |x_LF(t) - x(t)|. lf, target: (B, 3, H, W) in [-1, 1]."""
    return (lf - target).abs().mean()


def warp_regularizer(warp_delta: Tensor) -> Tensor:
    """Eq. 6 / 9, L_reg: mean |omega(t) - I| = mean |delta omega(t)|. warp_delta: (B, H, W, 2)."""
    return warp_delta.abs().mean()


def mask_bce(mask_logit: Tensor, target_mask: Tensor) -> Tensor:
    """Sec. 3.4, L_seg: binary cross-entropy of the predicted mask. (B, 1, H, W) logits vs [0, 1]."""
    return F.binary_cross_entropy_with_logits(mask_logit, target_mask)
