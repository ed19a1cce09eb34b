"""PSNR of two images in the model's [-1, 1] range (the reduced-precision and export checks)."""
from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1], measured on the [0, 1] range."""
    mse = float(np.mean(((np.clip(a, -1, 1) - np.clip(b, -1, 1)) / 2) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)
