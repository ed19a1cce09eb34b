"""Photo -> head rig: a framed photo, 3D control points over the whole frame and their triangles.

The control points are MediaPipe's 468-point 3D face mesh, two rows splitting the inner mouth,
rings on scaled copies of the face outline (hair, ears, neck, shoulders, background) whose depth
curves back to the head's silhouette, and points pinned on the frame border. Moving the points
and warping each Delaunay triangle affinely (warp.py) animates the photo; `follow` says how much
of the head's rigid motion each point takes (1 on the head, fading to 0 on the background).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from bilayer.data.synthetic.facemesh import LIPS_LOWER_INNER, LIPS_UPPER_INNER, face_mesh, visible_depth
from bilayer.data.synthetic.motion import smoothstep

# Ring scales relative to the face outline; the rings reach the head's silhouette depth at
# HEAD_SCALE, and the rigid motion fades out between HEAD_SCALE and STILL_SCALE.
RING_SCALES = (1.12, 1.28, 1.5, 1.8, 2.2, 2.7, 3.3)
HEAD_SCALE, STILL_SCALE = 1.3, 2.6
RING_POINTS = 40  # points per ring
BORDER_POINTS = 8  # points per frame side
MOUTH_ROWS = (0.45, 0.55)  # the inner-mouth rows, as fractions of the way from the upper to the lower lip


@dataclass(frozen=True)
class HeadRig:
    image: np.ndarray  # (S, S, 3) uint8 RGB: the photo framed around the face
    points: np.ndarray  # (N, 3) float32 (x, y, depth) px, depth away from the camera: 468 face mesh points first
    mouth_rows: np.ndarray  # (2, 9) int indices of the upper and lower inner-mouth rows
    follow: np.ndarray  # (N,) float32 in [0, 1]: share of the head's rigid motion each point takes
    triangles: np.ndarray  # (M, 3) int32 indices into points: Delaunay triangles of the neutral frame
    pivot: np.ndarray  # (3,) float32 px: head rotation centre (the face's centre, behind its outline)
    face_size: float  # px, width of the face mesh

    @property
    def size(self) -> int:
        return self.image.shape[0]


def frame_photo(photo: np.ndarray, size: int, framing: float, source: str) -> np.ndarray:
    """A (size, size, 3) square crop around the face, `framing` x the face width wide (less where
    the photo is too small), the face a little above the centre, like an interview shot."""
    mesh = face_mesh(photo, source)
    lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
    h, w = photo.shape[:2]
    side = min(framing * (hi[0] - lo[0]), w, h)
    cx, cy = (lo + hi) / 2
    cy += 0.05 * side
    x0 = float(np.clip(cx - side / 2, 0, w - side))
    y0 = float(np.clip(cy - side / 2, 0, h - side))
    s = size / side
    crop = np.array([[s, 0, -s * x0], [0, s, -s * y0]], np.float32)  # photo px -> frame px
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.warpAffine(photo, crop, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def _radial(xy: np.ndarray, values: np.ndarray, center: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Values given at points around `center`, interpolated periodically at the polar `angles`."""
    theta = np.arctan2(xy[:, 1] - center[1], xy[:, 0] - center[0])
    order = np.argsort(theta)
    return np.interp(angles, theta[order], values[order], period=2 * np.pi)


def _rings(hull: np.ndarray, pivot: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on scaled copies of the face outline `hull` (H, 3): (K, 3) points, (K,) follow weights.

    Depth goes from the outline's own depth back to the pivot's (the head's silhouette) by
    HEAD_SCALE, so the rings continue the face surface around the skull; points outside the
    frame are dropped.
    """
    center = pivot[:2]
    angles = np.linspace(-np.pi, np.pi, RING_POINTS, endpoint=False)
    radius = _radial(hull[:, :2], np.linalg.norm(hull[:, :2] - center, axis=1), center, angles)  # (A,)
    outline_depth = _radial(hull[:, :2], hull[:, 2], center, angles)
    unit = np.stack([np.cos(angles), np.sin(angles)], 1)  # (A, 2)
    points, follow = [], []
    for scale in RING_SCALES:
        xy = center + scale * radius[:, None] * unit
        back = smoothstep((scale - 1) / (HEAD_SCALE - 1))
        depth = outline_depth + back * (pivot[2] - outline_depth)
        inside = np.all((xy > 1) & (xy < size - 2), axis=1)
        points.append(np.column_stack([xy, depth])[inside])
        follow.append(np.full(inside.sum(), smoothstep((STILL_SCALE - scale) / (STILL_SCALE - HEAD_SCALE))))
    return np.concatenate(points), np.concatenate(follow)


def _mouth_rows(mesh: np.ndarray) -> np.ndarray:
    """(2, 9, 3) points splitting the inner mouth near its mid line: the upper row stays with the
    upper jaw and the lower one goes with the lower jaw, so teeth move with their jaw and only the
    thin band between the rows stretches over the opening gap."""
    upper, lower = mesh[LIPS_UPPER_INNER[1:-1]], mesh[LIPS_LOWER_INNER[1:-1]]  # (9, 3) each
    return np.stack([upper + MOUTH_ROWS[0] * (lower - upper), upper + MOUTH_ROWS[1] * (lower - upper)])


def _border(size: int, depth: float) -> np.ndarray:
    """(4 * BORDER_POINTS, 3) points around the frame edge, corners included."""
    t = np.linspace(0, size - 1, BORDER_POINTS + 1)[:-1]
    e = float(size - 1)
    xy = np.concatenate([np.column_stack([t, np.zeros_like(t)]), np.column_stack([np.full_like(t, e), t]),
                         np.column_stack([e - t, np.full_like(t, e)]), np.column_stack([np.zeros_like(t), e - t])])
    return np.column_stack([xy, np.full(len(xy), depth)])


def build_rig(photo: np.ndarray, size: int = 384, framing: float = 3.2, source: str = "photo") -> HeadRig:
    """photo (H, W, 3) uint8 RGB -> the rig of its framed (size x size) version."""
    image = frame_photo(photo, size, framing, source)
    mesh = face_mesh(image, source)  # (468, 3), measured again at the output resolution
    mesh[:, 2] = visible_depth(mesh)
    lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
    hull = mesh[cv2.convexHull(np.ascontiguousarray(mesh[:, :2]), returnPoints=False).ravel()]  # (H, 3) outline
    # The yaw axis lies behind the whole face outline: otherwise the outline's deepest points
    # (in front of the ears) would move against the face and fold over the rings beside them.
    pivot = np.array([*(lo + hi) / 2, hull[:, 2].max()], np.float32)
    mouth = _mouth_rows(mesh).reshape(-1, 3)  # (18, 3)
    ring, ring_follow = _rings(hull, pivot, size)
    border = _border(size, float(pivot[2]))
    points = np.concatenate([mesh, mouth, ring, border]).astype(np.float32)
    follow = np.concatenate([np.ones(len(mesh) + len(mouth)), ring_follow, np.zeros(len(border))]).astype(np.float32)
    mouth_rows = (len(mesh) + np.arange(len(mouth))).reshape(2, -1)
    triangles = Delaunay(points[:, :2]).simplices.astype(np.int32)
    return HeadRig(image, points, mouth_rows, follow, triangles, pivot, float(hi[0] - lo[0]))
