"""Face and crop boxes: from keypoints to a VoxCeleb-like square crop, and pixels in and out of it.

Two crop rules, one per preprocessing profile (`bilayer.config.Profile`): ours (`CropBox.around`,
OpenCV resampling, pixel-centre normalisation) and the one of the authors' released code
(`CropBox.official`, PIL bicubic resampling, corner normalisation), which their weights expect.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: The smallest face (`FaceBox.size`, in source pixels) worth a crop: preprocessing skips clips
#: whose median face is smaller, avatars refuse photos whose face is.
MIN_FACE_SIZE = 64.0


@dataclass(frozen=True)
class FaceBox:
    """Square face box in frame pixels: centre of the 68 keypoints' bounding box and the larger
    of its width and height (brows to chin, ear to ear). Every detector is mapped to this."""

    cx: float
    cy: float
    size: float

    @classmethod
    def from_keypoints(cls, keypoints: np.ndarray) -> "FaceBox":
        """keypoints: (68, 2) pixel coordinates."""
        lo, hi = keypoints.min(0), keypoints.max(0)
        return cls(float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, float((hi - lo).max()))

    def as_array(self) -> np.ndarray:
        return np.array([self.cx, self.cy, self.size], np.float64)

    def iou(self, other: "FaceBox") -> float:
        def bounds(b: FaceBox) -> np.ndarray:
            return np.array([b.cx - b.size / 2, b.cy - b.size / 2, b.cx + b.size / 2, b.cy + b.size / 2])

        a, b = bounds(self), bounds(other)
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / (self.size**2 + other.size**2 - inter)


@dataclass(frozen=True)
class CropBox:
    """Integer square crop of a frame: top-left corner and side, in frame pixels (may overhang)."""

    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, face: FaceBox, scale: float, shift: float) -> "CropBox":
        """VoxCeleb-like crop: `scale` x the face size, centre moved up by `shift` x the face size
        so that the hair is in and the chin is not at the border."""
        side = max(2, round(face.size * scale))
        cx, cy = face.cx, face.cy - shift * face.size
        return cls(round(cx - side / 2), round(cy - side / 2), side)

    @classmethod
    def official(cls, face: FaceBox) -> "CropBox":
        """The released code's crop (`infer.py`): side 2 x the face size, centre raised by 1/6 of
        it, with its integer arithmetic: centre rounded half to even, size truncated, the raise
        floor-divided. Exact on `FaceBox.from_keypoints`; also applied to a smoothed box."""
        cx, cy = (int(c) for c in np.round([face.cx, face.cy]))
        size = max(1, int(face.size))
        cy -= size // 6
        return cls(cx - size, cy - size, 2 * size)

    def _cut(self, frame: np.ndarray) -> np.ndarray:
        """frame (H, W, C) -> (side, side, C) at full resolution, black outside the frame."""
        h, w = frame.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        inside = frame[max(self.y0, 0) : min(y1, h), max(self.x0, 0) : min(x1, w)]
        pad = (max(-self.y0, 0), max(y1 - h, 0), max(-self.x0, 0), max(x1 - w, 0))
        if any(pad):
            inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_CONSTANT, value=0)
        return inside

    def crop(self, frame: np.ndarray, size: int) -> np.ndarray:
        """frame (H, W, C) -> (size, size, C); parts outside the frame are black."""
        # Area averaging when shrinking avoids aliasing from high-resolution sources.
        interp = cv2.INTER_AREA if self.side > size else cv2.INTER_LINEAR
        return cv2.resize(self._cut(frame), (size, size), interpolation=interp)

    def crop_official(self, frame: np.ndarray, size: int) -> np.ndarray:
        """frame (H, W, 3) uint8 RGB -> (size, size, 3) uint8, pixel for pixel the released code's
        `PIL.Image.crop` (black outside the frame) + `resize(BICUBIC)`."""
        return np.array(Image.fromarray(self._cut(frame)).resize((size, size), Image.Resampling.BICUBIC))

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """(..., 2) frame pixel coordinates -> pixel coordinates in the size x size crop."""
        s = size / self.side  # cv2.resize maps pixel areas: centre u -> (u + 0.5) * s - 0.5
        return ((points - (self.x0, self.y0) + 0.5) * s - 0.5).astype(np.float32)

    def normalize_official(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) frame pixel coordinates -> the released code's normalized crop coordinates
        (p - corner) / side * 2 - 1 (no pixel-centre offset), float32 in its order of operations."""
        corner = np.array([self.x0, self.y0], np.float32)
        return ((np.asarray(points, np.float32) - corner) / np.float32(self.side) - np.float32(0.5)) * np.float32(2)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.side], np.float32)
