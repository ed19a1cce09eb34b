"""Silhouette agreement: IoU of a predicted foreground mask with the target's dataset mask.

Not in the paper's Table 2. The segmentation head (Sec. 3.4) decides which pixels an avatar
paints; with `EvalConfig.mask = "target"` the image metrics do not see it, so it is scored here.
"""
from __future__ import annotations

import torch
from torch import Tensor


def mask_iou(mask: Tensor, target_mask: Tensor, threshold: float = 0.5) -> Tensor:
    """mask, target_mask: (B, 1, H, W) in [0, 1] -> (B,) |A ∩ B| / |A ∪ B| of the pixels >= threshold
    (1 when both are empty)."""
    a, b = mask >= threshold, target_mask >= threshold
    inter = (a & b).sum(dim=(1, 2, 3)).float()
    union = (a | b).sum(dim=(1, 2, 3)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
