"""Pixel, warp-regularization and segmentation losses (Sec. 3.2, 3.4; Eq. 2, 9).

Norms are averaged over all elements (the 1/HW of the equations, channels included), matching the
released code for which the paper's loss weights were chosen. Every reduction accumulates and
returns float32, also on the bfloat16 / float16 activations of an autocast step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mean_abs(x: Tensor) -> Tensor:
    """mean |x| over all elements, as a float32 scalar whatever the dtype of `x`."""
    return x.abs().mean(dtype=torch.float32)


def pixel_l1(lf: Tensor, target: Tensor) -> Tensor:
    """Eq. 2, L_pix: mean |x_LF(t) - x(t)|. lf, target: (B, 3, H, W) in [-1, 1]."""
    return mean_abs(lf - target)


def warp_regularizer(warp_delta: Tensor) -> Tensor:
    """Eq. 6 / 9, L_reg: mean |omega(t) - I| = mean |delta omega(t)|. warp_delta: (B, H, W, 2)."""
    return mean_abs(warp_delta)


def mask_bce(mask_logit: Tensor, target_mask: Tensor) -> Tensor:
    """Sec. 3.4, L_seg: binary cross-entropy of the predicted mask. (B, 1, H, W) logits vs [0, 1]."""
    return F.binary_cross_entropy_with_logits(mask_logit, target_mask)
