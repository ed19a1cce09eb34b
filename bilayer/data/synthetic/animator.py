"""HeadAnimator: one photo -> frames of that head turning, talking, smiling and blinking.

Built once per photo (face mesh, rig, expression fields), then cheap per frame: move the rig's
points (expression, then rigid 3D rotation about the head centre with orthographic projection,
faded out towards the background), warp the photo piecewise-affinely in depth order and shade
the newly opened part of the mouth.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from bilayer.data.synthetic.expressions import expression_fields
from bilayer.data.synthetic.facemesh import LIPS_UPPER_INNER, NUM_POINTS
from bilayer.data.synthetic.motion import HeadMotion
from bilayer.data.synthetic.rig import HeadRig, build_rig
from bilayer.data.synthetic.warp import warp_piecewise_affine
from bilayer.errors import InputError
from bilayer.io.media import MediaReader

MOUTH_CAVITY_RGB = np.array([48, 18, 20], np.float32)
MOUTH_SHADE = 0.95  # opacity of the cavity where the gap is entirely new
WARP_SMOOTH = 0.008  # sigma of the warp's smoothing, fraction of the frame side
SUPERSAMPLE = 2  # anti-aliasing of the silhouettes


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation in image axes (x right, y down, z away from the camera), angles in degrees.

    Signs follow HeadMotion: + yaw moves the nose right, + pitch down, + roll is clockwise.
    """
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


class HeadAnimator:
    """Renders `HeadMotion`s of one photo's head as (S, S, 3) uint8 RGB frames."""

    def __init__(self, rig: HeadRig):
        self.rig = rig
        self.fields = expression_fields(rig)
        self._on_face = (rig.triangles < NUM_POINTS + rig.mouth_rows.size).all(1)  # (M,) warped without smoothing

    @classmethod
    def from_image(cls, photo: np.ndarray, size: int = 384, framing: float = 3.2,
                   source: str = "photo") -> "HeadAnimator":
        """photo (H, W, 3) uint8 RGB; frames are size x size, `framing` face widths wide."""
        return cls(build_rig(photo, size, framing, source))

    @classmethod
    def from_file(cls, path: str | Path, size: int = 384, framing: float = 3.2) -> "HeadAnimator":
        """A photo file (jpg, png, ...); errors name the file."""
        with MediaReader(path) as media:
            if media.info.kind != "image":
                raise InputError(f"{path}: expected a photo, got a {media.info.kind}")
            _, _, photo = next(media.frames())
        return cls.from_image(photo, size, framing, str(path))

    @property
    def size(self) -> int:
        return self.rig.size

    def points(self, motion: HeadMotion) -> np.ndarray:
        """(N, 3) rig points (x, y, depth) px for one frame; the first 468 are the face mesh."""
        rig, f = self.rig, self.fields
        p = rig.points.copy()
        p[:, :2] += motion.jaw * f.jaw + motion.smile * f.smile + motion.blink * f.blink
        shift = np.array([motion.shift_x, motion.shift_y, 0.0]) * rig.size
        rigid = (p - rig.pivot) @ (motion.scale * rotation(motion.yaw, motion.pitch, motion.roll)).T + rig.pivot + shift
        return (p + rig.follow[:, None] * (rigid - p)).astype(np.float32)

    def render(self, motion: HeadMotion) -> np.ndarray:
        """(S, S, 3) uint8 RGB frame of the photo moved by `motion` (HeadMotion() gives the photo)."""
        moved = self.points(motion)
        depth = moved[self.rig.triangles, 2].mean(1)  # (M,)
        # Far to near, the face after everything else: it is in front of the hair and neck around
        # it, and mixing the two orders would make a ragged jaw line where the turn folds them.
        order = np.lexsort((-depth, self._on_face))
        frame = warp_piecewise_affine(self.rig.image, self.rig.points[:, :2], moved[:, :2], self.rig.triangles, order,
                                      WARP_SMOOTH * self.size, self._on_face, SUPERSAMPLE)
        return self._shade_mouth(frame, moved)

    def _shade_mouth(self, frame: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """Darken the band between the inner-mouth rows by the share of it that is new: an opening
        jaw shows a cavity, while a photo's own teeth and lips keep their look."""
        upper, lower = self.rig.mouth_rows
        middle = len(upper) // 2
        band_photo = np.linalg.norm(self.rig.points[lower[middle], :2] - self.rig.points[upper[middle], :2])
        band_now = np.linalg.norm(moved[lower[middle], :2] - moved[upper[middle], :2])
        opacity = MOUTH_SHADE * max(0.0, 1 - (band_photo + 1) / (band_now + 1))
        if opacity < 0.02:
            return frame
        corners = [LIPS_UPPER_INNER[0], LIPS_UPPER_INNER[-1]]
        polygon = moved[[corners[0], *upper, corners[1], *lower[::-1]], :2]  # (20, 2)
        x0, y0 = np.maximum(np.floor(polygon.min(0)).astype(int) - 3, 0)
        x1, y1 = np.minimum(np.ceil(polygon.max(0)).astype(int) + 4, self.size)
        if x1 <= x0 or y1 <= y0:
            return frame
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(mask, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.6)[..., None] * opacity  # (h, w, 1) soft edge
        patch = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = np.round(patch * (1 - mask) + MOUTH_CAVITY_RGB * mask).astype(np.uint8)
        return frame
