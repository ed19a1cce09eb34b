"""Driving keypoints: absolute (self-reenactment) or relative motion transfer (cross-reenactment).

Absolute driving feeds the driver's keypoints as they are, which also transfers the driver's face
shape: right when driver and source are the same person. Relative driving keeps the source's
shape and applies only the driver's motion since its first frame, rescaled to the source's face
size (as FOMM's `normalize_kp` with `adapt_movement_scale`):

    kp(t) = kp_src + (kp_drv(t) - kp_drv(0)) * sqrt(area(hull(kp_src)) / area(hull(kp_drv(0))))

All keypoints are (68, 2) float32 in the crop's normalized [-1, 1] coordinates.
"""
from __future__ import annotations

import math

import numpy as np


def hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain + shoelace)."""
    pts = sorted(map(tuple, np.asarray(points, np.float64)))

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half(pts) + half(pts[::-1]))
    if len(hull) < 3:
        return 0.0
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


class RelativeMotion:
    """kp(t) = source + (driver(t) - driver(0)) * scale, scale from the convex hull areas."""

    def __init__(self, source: np.ndarray, driver_first: np.ndarray, adapt_scale: bool = True):
        self.source = np.asarray(source, np.float32)
        self.first = np.asarray(driver_first, np.float32)
        area_drv = hull_area(self.first)
        self.scale = math.sqrt(hull_area(self.source) / area_drv) if adapt_scale and area_drv > 0 else 1.0

    def __call__(self, driver: np.ndarray) -> np.ndarray:
        return (self.source + (np.asarray(driver, np.float32) - self.first) * self.scale).astype(np.float32)


def motion_samples(keypoints: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, 68, 2) plausible poses around (68, 2) keypoints: random similarity transforms (rotation
    +-15 deg, scale +-10 %, shift +-0.1) plus small per-point motion (expressions). Used to
    calibrate the int8 runtime on the range of poses an avatar is driven with."""
    rng = np.random.default_rng(seed)
    centre = keypoints.mean(0)
    out = []
    for _ in range(n):
        a = math.radians(rng.uniform(-15, 15))
        rot = rng.uniform(0.9, 1.1) * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        kp = (keypoints - centre) @ rot.T + centre + rng.uniform(-0.1, 0.1, 2)
        out.append(kp + rng.normal(0, 0.01, kp.shape))
    return np.stack(out).astype(np.float32)
