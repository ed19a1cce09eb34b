"""MediaPipe's 3D face mesh on a photo, and the mesh indices of the parts the animator moves."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from bilayer.errors import InputError
from bilayer.io.native import quiet_stderr

NUM_POINTS = 468  # the mesh without the iris points (the eyes' interior stays one warped piece)
NOSE_TIP = 4
CHIN = 152
# Inner and outer lip contours, each from the subject's right mouth corner to the left one.
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
MOUTH_CORNERS = [61, 291, 78, 308]


@dataclass(frozen=True)
class EyeContours:
    upper: list[int]  # upper lid margin, between the corners
    lower: list[int]  # lower lid margin, corners included
    crease: list[int]  # the ring above the lid
    brow_side: list[int]  # the next ring up, towards the brow


EYES = (  # the subject's right eye (image left), then the left one
    EyeContours([246, 161, 160, 159, 158, 157, 173], [33, 7, 163, 144, 145, 153, 154, 155, 133],
                [247, 30, 29, 27, 28, 56, 190], [113, 225, 224, 223, 222, 221, 189]),
    EyeContours([466, 388, 387, 386, 385, 384, 398], [263, 249, 390, 373, 374, 380, 381, 382, 362],
                [467, 260, 259, 257, 258, 286, 414], [342, 445, 444, 443, 442, 441, 413]),
)


def face_mesh(image: np.ndarray, source: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (468, 3) float32 (x, y, depth) in pixels; depth grows away from the
    camera, in the x scale (as MediaPipe's z). `source` names the image in errors."""
    import mediapipe as mp

    with quiet_stderr(), mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesher:
        result = mesher.process(np.ascontiguousarray(image))
    if not result.multi_face_landmarks:
        raise InputError(f"{source}: MediaPipe finds no face in the photo")
    h, w = image.shape[:2]
    points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], np.float32)
    return points[:NUM_POINTS] * np.array([w, h, w], np.float32)


@functools.cache
def mesh_triangles() -> np.ndarray:
    """(T, 3) int triangles of MediaPipe's face mesh surface (the 3-cycles of its tessellation)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in neighbours[a] & neighbours[b]}
    return np.array(sorted(triangles), np.int64)


def visible_depth(mesh: np.ndarray) -> np.ndarray:
    """(468, 3) mesh -> (468,) depth of the frontmost mesh surface at each point's image position.

    Points the photo does not show (the sides of the face behind the cheeks) take the depth of
    what hides them, so depth becomes a height field over the image: turning it never folds the
    side that turns towards the camera.
    """
    tri = mesh[mesh_triangles()]  # (T, 3, 3)
    a, e1, e2 = tri[:, 0, :2], tri[:, 1, :2] - tri[:, 0, :2], tri[:, 2, :2] - tri[:, 0, :2]  # (T, 2)
    rel = mesh[:, None, :2] - a  # (P, T, 2)
    den = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # (T,)
    den = np.where(np.abs(den) < 1e-6, np.inf, den)
    b1 = (rel[..., 0] * e2[:, 1] - rel[..., 1] * e2[:, 0]) / den  # (P, T) barycentric coordinates
    b2 = (e1[:, 0] * rel[..., 1] - e1[:, 1] * rel[..., 0]) / den
    inside = (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
    depth = tri[:, 0, 2] + b1 * (tri[:, 1, 2] - tri[:, 0, 2]) + b2 * (tri[:, 2, 2] - tri[:, 0, 2])
    return np.minimum(mesh[:, 2], np.where(inside, depth, np.inf).min(1))
