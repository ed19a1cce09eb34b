"""Head pose and expression per frame, and smooth random curves of them for synthetic clips.

Pose follows sums of a few low-frequency sinusoids (natural, unhurried head motion), the jaw a
speech-like 2.5-4 syllables per second within talking spells, blinks are short random events.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadMotion:
    """One frame's head pose and expression relative to the photo (all zero: the photo itself)."""

    yaw: float = 0.0  # degrees; + turns the nose towards the image's right
    pitch: float = 0.0  # degrees; + tilts the nose down
    roll: float = 0.0  # degrees; + turns the head clockwise in the image
    shift_x: float = 0.0  # head translation, fraction of the frame side
    shift_y: float = 0.0
    scale: float = 1.0  # head size factor (moving towards the camera)
    jaw: float = 0.0  # 0 as in the photo .. 1 wide open
    smile: float = 0.0  # 0 as in the photo .. 1 broad smile
    blink: float = 0.0  # 0 as in the photo .. 1 eyes closed


@dataclass(frozen=True)
class MotionRanges:
    """Largest values the random curves reach (realistic for a talking head)."""

    yaw: float = 25.0
    pitch: float = 15.0
    roll: float = 10.0
    shift: float = 0.04
    scale: float = 0.05  # +- around 1
    pose_hz: float = 0.4  # highest frequency of the pose curves
    blinks_per_s: float = 0.3
    talk_fraction: float = 0.6  # share of the time spent talking (jaw moving)


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """0 below 0, 1 above 1, a cubic S-curve with flat ends in between."""
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def smooth_curve(rng: np.random.Generator, t: np.ndarray, max_hz: float, terms: int = 4) -> np.ndarray:
    """(T,) smooth curve in [-1, 1] over times t: random sinusoids, softly stretched to use the range."""
    freqs = rng.uniform(0.05, max_hz, terms)
    amps = rng.uniform(0.3, 1.0, terms)
    phases = rng.uniform(0, 2 * np.pi, terms)
    curve = (amps * np.sin(2 * np.pi * freqs * t[:, None] + phases)).sum(1) / amps.sum()
    return np.tanh(2.0 * curve) / np.tanh(2.0)


def _blinks(rng: np.random.Generator, t: np.ndarray, rate: float) -> np.ndarray:
    """(T,) eyelid closure in [0, 1]: blinks at random times, 0.1 s closing and 0.2 s opening."""
    closure = np.zeros_like(t)
    start = rng.exponential(1 / rate)
    while start < t[-1] + 0.3:
        tau = t - start
        closing = np.clip(tau / 0.1, 0, 1)
        opening = np.clip(1 - (tau - 0.1) / 0.2, 0, 1)
        bump = np.where(tau < 0.1, closing, opening) * (tau >= 0)
        closure = np.maximum(closure, smoothstep(bump))
        start += 0.5 + rng.exponential(1 / rate)
    return closure


def _jaw(rng: np.random.Generator, t: np.ndarray, talk_fraction: float) -> np.ndarray:
    """(T,) jaw opening in [0, 1]: syllable-rate oscillation gated by slowly varying talking spells."""
    rate = 3.2 + 0.7 * smooth_curve(rng, t, 0.3)  # syllables per second
    phase = 2 * np.pi * np.cumsum(rate) * np.gradient(t) + rng.uniform(0, 2 * np.pi)
    syllables = (0.5 - 0.5 * np.cos(phase)) ** 1.5
    spell = np.clip(4 * (smooth_curve(rng, t, 0.2) + 2 * talk_fraction - 1), 0, 1)
    loudness = 0.6 + 0.4 * smooth_curve(rng, t, 0.5)
    return spell * syllables * loudness


def random_motion(num_frames: int, fps: float, seed: int, ranges: MotionRanges = MotionRanges()) -> list[HeadMotion]:
    """Smooth random head motion for `num_frames` frames at `fps`, deterministic per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / fps
    r = ranges
    pose = {name: limit * smooth_curve(rng, t, r.pose_hz) for name, limit in
            (("yaw", r.yaw), ("pitch", r.pitch), ("roll", r.roll), ("shift_x", r.shift), ("shift_y", r.shift))}
    scale = 1 + r.scale * smooth_curve(rng, t, r.pose_hz / 2)
    jaw = _jaw(rng, t, r.talk_fraction)
    smile = np.clip(1.3 * smooth_curve(rng, t, 0.15), 0, 1)
    blink = _blinks(rng, t, r.blinks_per_s)
    return [HeadMotion(**{k: float(v[i]) for k, v in pose.items()}, scale=float(scale[i]), jaw=float(jaw[i]),
                       smile=float(smile[i]), blink=float(blink[i])) for i in range(num_frames)]
