"""Landmark image, coordinate convention and the 68-point flip permutation (no detectors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bilayer.data.landmarks import (
    FLIP_PERMUTATION, PART_INDEX, PARTS, draw_landmarks, flip_keypoints, landmark_image, normalize_keypoints,
    pixel_keypoints,
)


def face_keypoints(size: int = 256) -> np.ndarray:
    """A plausible frontal face: (68, 2) pixel keypoints, symmetric about x = size / 2."""
    rng = np.random.default_rng(0)
    kp = np.zeros((68, 2), np.float32)
    t = np.linspace(-1, 1, 17)
    kp[0:17] = np.stack([0.5 + 0.3 * t, 0.45 + 0.3 * np.sqrt(1 - 0.9 * t**2)], 1)  # jaw
    kp[17:22] = np.stack([np.linspace(0.28, 0.45, 5), np.full(5, 0.35)], 1)
    kp[22:27] = np.stack([np.linspace(0.55, 0.72, 5), np.full(5, 0.35)], 1)
    kp[27:31] = np.stack([np.full(4, 0.5), np.linspace(0.42, 0.58, 4)], 1)
    kp[31:36] = np.stack([np.linspace(0.44, 0.56, 5), np.full(5, 0.62)], 1)
    a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    # contours start at the image-left corner and run along the upper edge first (iBUG order)
    kp[36:42] = np.stack([0.36 - 0.05 * np.cos(a), 0.42 - 0.02 * np.sin(a)], 1)
    kp[42:48] = np.stack([0.64 - 0.05 * np.cos(a), 0.42 - 0.02 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    kp[48:60] = np.stack([0.5 - 0.12 * np.cos(a), 0.75 - 0.05 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    kp[60:68] = np.stack([0.5 - 0.08 * np.cos(a), 0.75 - 0.02 * np.sin(a)], 1)
    return kp * size + rng.normal(0, 0.01, kp.shape).astype(np.float32)


def test_flip_permutation_is_a_mirror_involution():
    perm = FLIP_PERMUTATION
    assert sorted(perm) == list(range(68))
    assert (perm[perm] == np.arange(68)).all()
    midline = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert (perm[midline] == midline).all()
    assert (np.sort(perm[PART_INDEX["right_eye"]]) == PART_INDEX["left_eye"]).all()
    assert (np.sort(perm[PART_INDEX["right_brow"]]) == PART_INDEX["left_brow"]).all()
    assert perm[0] == 16 and perm[36] == 45 and perm[39] == 42 and perm[48] == 54


def test_flip_keypoints_puts_left_eye_on_mirrored_right_eye():
    kp = normalize_keypoints(face_keypoints(), 256)
    flipped = flip_keypoints(kp)
    # the subject's left eye after the flip = the old right eye, mirrored (outer corner 45 <- 36)
    np.testing.assert_allclose(flipped[45], kp[36] * [-1, 1])
    np.testing.assert_allclose(flipped[42], kp[39] * [-1, 1])
    # a symmetric face is its own mirror image
    np.testing.assert_allclose(flipped, kp, atol=0.01)
    np.testing.assert_allclose(flip_keypoints(flipped), kp, atol=1e-6)


def test_coordinate_convention_matches_grid_sample():
    size = 8
    px = np.array([[0.0, 0.0], [size - 1.0, 3.0]], np.float32)
    norm = normalize_keypoints(px, size)
    np.testing.assert_allclose(norm[0], [-1 + 1 / size] * 2)
    np.testing.assert_allclose(pixel_keypoints(norm, size), px, atol=1e-6)
    # grid_sample(align_corners=False) reads pixel (7, 3) at these coordinates
    image = torch.zeros(1, 1, size, size)
    image[0, 0, 3, 7] = 1
    sample = torch.nn.functional.grid_sample(image, torch.from_numpy(norm[1]).view(1, 1, 1, 2), align_corners=False)
    assert sample.item() == pytest.approx(1.0)


def test_draw_landmarks_colours_each_part():
    kp = face_keypoints()
    image = draw_landmarks(kp, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert (image[:20, :20] == 0).all()  # black background
    for name, idx, _, colour in PARTS:
        a, b = kp[idx[0]], kp[idx[1]]
        x, y = np.round((a + b) / 2).astype(int)  # middle of the part's first segment
        assert np.abs(image[y, x].astype(int) - colour).max() < 80, name
    batch = draw_landmarks(np.stack([kp, kp / 2]), 64)
    assert batch.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError):
        draw_landmarks(kp[:5], 64)


def test_landmark_image_is_draw_landmarks_in_minus_one_one():
    kp = face_keypoints(128)
    norm = torch.from_numpy(normalize_keypoints(kp, 128))
    out = landmark_image(norm[None].repeat(3, 1, 1), 128)
    assert out.shape == (3, 3, 128, 128) and out.dtype == torch.float32
    assert out.min() == -1 and out.max() <= 1
    expected = draw_landmarks(kp, 128).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)
    assert landmark_image(norm, 128).shape == (1, 3, 128, 128)
