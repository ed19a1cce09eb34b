"""The 68 facial keypoints (iBUG-68 order, as dlib's predictor outputs them) and the landmark image.

The paper feeds keypoints to the embedder and the discriminator "encoded as an RGB image ... a
landmark image" (Sec. 3.1), and to the inference generator as a vector. This module holds the one
rasterizer used by both the data pipeline and the runtime (face parts drawn as coloured polylines
on a black background, the "stickman"), the pixel <-> normalized coordinate convention, and the
left/right permutation used by flip augmentation. It imports no detector.

Coordinates: keypoints are (68, 2) float (x, y). Pixel coordinates put pixel centres on integers;
normalized coordinates follow `grid_sample(align_corners=False)`: x_norm = (x_px + 0.5) / W * 2 - 1.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

NUM_KEYPOINTS = 68

#: Face parts as (name, point indices, closed polyline, RGB colour). "left"/"right" are the
#: subject's own sides (iBUG convention: points 36-41 are the subject's right eye).
PARTS: tuple[tuple[str, tuple[int, ...], bool, tuple[int, int, int]], ...] = (
    ("jaw", tuple(range(0, 17)), False, (255, 255, 255)),
    ("right_brow", tuple(range(17, 22)), False, (255, 96, 0)),
    ("left_brow", tuple(range(22, 27)), False, (0, 160, 255)),
    ("nose_bridge", tuple(range(27, 31)), False, (255, 255, 0)),
    ("nostrils", tuple(range(31, 36)), False, (160, 255, 0)),
    ("right_eye", tuple(range(36, 42)), True, (255, 0, 0)),
    ("left_eye", tuple(range(42, 48)), True, (0, 0, 255)),
    ("outer_lips", tuple(range(48, 60)), True, (255, 0, 255)),
    ("inner_lips", tuple(range(60, 68)), True, (0, 255, 160)),
)
PART_INDEX = {name: np.array(idx) for name, idx, _, _ in PARTS}

# Mirror pairs of the iBUG-68 scheme; points on the vertical midline map to themselves.
_MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # jaw
    + [(17 + i, 26 - i) for i in range(5)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    + [(60, 64), (61, 63), (65, 67)]  # inner lips
)


def _flip_permutation() -> np.ndarray:
    perm = np.arange(NUM_KEYPOINTS)
    for a, b in _MIRROR_PAIRS:
        perm[a], perm[b] = b, a
    return perm


#: (68,) int: after a horizontal flip, keypoint i of the flipped face is keypoint FLIP_PERMUTATION[i]
#: of the original one, mirrored.
FLIP_PERMUTATION = _flip_permutation()


def normalize_keypoints(keypoints_px: np.ndarray, size: int) -> np.ndarray:
    """(..., 68, 2) pixel coordinates in a size x size image -> normalized [-1, 1] (float32)."""
    return ((np.asarray(keypoints_px, np.float32) + 0.5) / size * 2 - 1).astype(np.float32)


def pixel_keypoints(keypoints_norm: np.ndarray, size: int) -> np.ndarray:
    """Inverse of `normalize_keypoints`: (..., 68, 2) normalized -> pixel coordinates (float32)."""
    return ((np.asarray(keypoints_norm, np.float32) + 1) / 2 * size - 0.5).astype(np.float32)


def flip_keypoints(keypoints_norm: np.ndarray) -> np.ndarray:
    """Keypoints of the horizontally flipped image: (..., 68, 2) normalized -> (..., 68, 2).

    Mirroring x alone would leave e.g. the subject's left eye labelled as the right one; the
    permutation keeps every index on its semantic part.
    """
    flipped = np.array(keypoints_norm, np.float32)[..., FLIP_PERMUTATION, :]
    flipped[..., 0] *= -1
    return flipped


def _thickness(size: int) -> int:
    return max(1, round(size / 128))  # 2 px at 256, 1 px at 64 and 128


def draw_landmarks(keypoints_px: np.ndarray, size: int) -> np.ndarray:
    """Landmark image: (68, 2) pixel keypoints -> uint8 (size, size, 3) RGB, parts as coloured
    polylines on black; (N, 68, 2) -> (N, size, size, 3)."""
    keypoints_px = np.asarray(keypoints_px, np.float32)
    if keypoints_px.ndim == 3:
        return np.stack([draw_landmarks(k, size) for k in keypoints_px])
    if keypoints_px.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must be (68, 2) or (N, 68, 2), got {keypoints_px.shape}")
    image = np.zeros((size, size, 3), np.uint8)
    shift = 4  # sub-pixel precision: cv2 takes fixed-point coordinates with 4 fractional bits
    points = np.round(keypoints_px * (1 << shift)).astype(np.int32)
    for _, idx, closed, colour in PARTS:
        cv2.polylines(image, [points[list(idx)]], closed, colour, _thickness(size), cv2.LINE_AA, shift)
    return image


#: The landmark image of the authors' released code (`draw_stickmen`, 68-point branch), which
#: their weights were trained on: (point indices, closed, RGB colour) per polyline, 1-px LINE_8
#: lines 2 px thick on a background of 1 (not 0), at integer (truncated) pixel positions. The
#: nose bridge ends with a segment from its tip (30) to the nostrils' centre (33).
OFFICIAL_PARTS: tuple[tuple[tuple[int, ...], bool, tuple[int, int, int]], ...] = (
    (tuple(range(0, 17)), False, (255, 255, 255)),  # jaw
    (tuple(range(17, 22)), False, (255, 0, 0)),  # right brow
    (tuple(range(22, 27)), False, (0, 255, 0)),  # left brow
    ((27, 28, 29, 30, 30, 33), False, (0, 0, 255)),  # nose bridge and tip
    (tuple(range(31, 36)), False, (0, 0, 255)),  # nostrils
    (tuple(range(36, 42)), True, (255, 0, 255)),  # right eye
    (tuple(range(42, 48)), True, (0, 255, 255)),  # left eye
    (tuple(range(48, 60)), True, (255, 255, 0)),  # outer lips
    (tuple(range(60, 68)), True, (255, 255, 0)),  # inner lips
)
OFFICIAL_THICKNESS = 2  # their `stickmen_thickness` at 256 px


def draw_official_landmarks(keypoints_norm: np.ndarray, size: int) -> np.ndarray:
    """The released code's landmark image of (68, 2) normalized keypoints (x / side * 2 - 1 of the
    crop) -> uint8 (size, size, 3) RGB; (N, 68, 2) -> (N, size, size, 3). Pixel-identical to
    their `draw_stickmen` for the same float32 keypoints."""
    keypoints_norm = np.asarray(keypoints_norm, np.float32)
    if keypoints_norm.ndim == 3:
        return np.stack([draw_official_landmarks(k, size) for k in keypoints_norm])
    if keypoints_norm.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must be (68, 2) or (N, 68, 2), got {keypoints_norm.shape}")
    points = ((keypoints_norm + 1) / 2 * size).astype(np.int32)  # float32 arithmetic, truncated
    image = np.ones((size, size, 3), np.uint8)
    for idx, closed, colour in OFFICIAL_PARTS:
        cv2.polylines(image, [points[list(idx), None]], closed, colour, OFFICIAL_THICKNESS)
    return image


def draw_profile_landmarks(keypoints_norm: np.ndarray, size: int, profile: str = "bilayer") -> np.ndarray:
    """The landmark image a model of preprocessing `profile` (config.Profile) was trained on:
    (68, 2) or (N, 68, 2) normalized keypoints -> uint8 (size, size, 3) or (N, size, size, 3)."""
    if profile == "official":
        return draw_official_landmarks(keypoints_norm, size)
    return draw_landmarks(pixel_keypoints(keypoints_norm, size), size)


def landmark_image(keypoints_norm: Tensor, size: int, profile: str = "bilayer") -> Tensor:
    """Torch wrapper of `draw_profile_landmarks`: (B, 68, 2) or (68, 2) normalized keypoints ->
    (B, 3, size, size) float32 in [-1, 1] (stickman on a -1 background), on the input's device."""
    batched = keypoints_norm if keypoints_norm.dim() == 3 else keypoints_norm[None]
    drawn = draw_profile_landmarks(batched.detach().float().cpu().numpy(), size, profile)
    images = drawn.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1  # (B, 3, size, size)
    return torch.from_numpy(images).to(keypoints_norm.device)
