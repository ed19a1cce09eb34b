"""Value-range conversions shared by the metrics: the model works in [-1, 1], metrics in [0, 1]
or 8-bit RGB (what a detector or a PNG sees)."""
from __future__ import annotations

import numpy as np
from torch import Tensor


def to_unit_range(image: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (generator outputs may overshoot)."""
    return ((image + 1) / 2).clamp(0, 1)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 RGB, rounded to the nearest level."""
    return (to_unit_range(images.detach().float()) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
