"""Face and crop boxes: from keypoints to a VoxCeleb-like square crop, and pixels in and out of it."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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

    def crop(self, frame: np.ndarray, size: int) -> np.ndarray:
        """frame (H, W, C) -> (size, size, C); parts outside the frame are black."""
        h, w = frame.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        inside = frame[max(self.y0, 0) : min(y1, h), max(self.x0, 0) : min(x1, w)]
        pad = (max(-self.y0, 0), max(y1 - h, 0), max(-self.x0, 0), max(x1 - w, 0))
        if any(pad):
            inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_CONSTANT, value=0)
        # Area averaging when shrinking avoids aliasing from high-resolution sources.
        interp = cv2.INTER_AREA if self.side > size else cv2.INTER_LINEAR
        return cv2.resize(inside, (size, size), interpolation=interp)

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """(..., 2) frame pixel coordinates -> pixel coordinates in the size x size crop."""
        s = size / self.side  # cv2.resize maps pixel areas: centre u -> (u + 0.5) * s - 0.5
        return ((points - (self.x0, self.y0) + 0.5) * s - 0.5).astype(np.float32)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.side], np.float32)
