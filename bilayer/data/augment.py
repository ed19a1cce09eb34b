"""Pair-consistent colour augmentation: one random colour transform for both frames of a pair.

Not in the paper, which trains on thousands of VoxCeleb2 people. With a few dozen identities a
model can memorise each person's colouring instead of reading it from the source frame; giving
the source and the target of a pair the same random hue rotation, saturation and brightness turns
every person into many, and only the source can tell which. Linear in RGB, so one 3x3 matrix:

    M = brightness * (saturation * I + (1 - saturation) * 1 w^T) @ R_hue

w: Rec. 601 luma weights; R_hue: rotation about the grey axis (1, 1, 1), so greys stay grey.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

LUMA = np.array([0.299, 0.587, 0.114])


def hue_rotation(degrees: float) -> np.ndarray:
    """(3, 3) rotation of RGB about the grey axis (Rodrigues); +120 degrees maps R -> G -> B."""
    k = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = math.radians(degrees)
    return math.cos(t) * np.eye(3) + math.sin(t) * cross + (1 - math.cos(t)) * np.outer(k, k)


def color_matrix(rng: np.random.Generator, hue_degrees: float, saturation: float, brightness: float) -> np.ndarray:
    """(3, 3) random colour transform: hue rotated by U(-hue_degrees, hue_degrees), saturation and
    brightness scaled by U(1 - saturation, 1 + saturation) and U(1 - brightness, 1 + brightness)."""
    hue = rng.uniform(-hue_degrees, hue_degrees)
    sat = rng.uniform(1 - saturation, 1 + saturation)
    gain = rng.uniform(1 - brightness, 1 + brightness)
    desaturate = sat * np.eye(3) + (1 - sat) * np.outer(np.ones(3), LUMA)
    return gain * desaturate @ hue_rotation(hue)


def apply_color(image: Tensor, matrix: np.ndarray) -> Tensor:
    """image (3, H, W) in [-1, 1] -> the same, its RGB (in [0, 1]) multiplied by `matrix` and clipped."""
    m = torch.as_tensor(matrix, dtype=image.dtype)
    rgb = torch.einsum("ij,jhw->ihw", m, (image + 1) / 2).clamp(0, 1)  # (3, H, W)
    return rgb * 2 - 1
