"""Expression displacement fields on a head rig: jaw opening, smile, blink.

Each field is (N, 2) pixels per unit of expression over all rig points (the rings near the chin
follow the jaw too, so no triangle folds), so a frame's expression is a linear combination.
Directions are in the face's own frame, u along the eyes and v down the face, so a tilted head
opens its mouth along its own vertical.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bilayer.data.synthetic.facemesh import (
    CHIN, EYES, LIPS_LOWER_INNER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_UPPER_OUTER, MOUTH_CORNERS, NUM_POINTS,
)
from bilayer.data.synthetic.motion import smoothstep
from bilayer.data.synthetic.rig import HeadRig

JAW_DROP = 0.11  # chin travel at jaw=1, fraction of the face width (about 1.5 cm)
SMILE_PULL = (0.05, -0.035)  # mouth corner travel at smile=1 (outwards, up), fraction of the face width
SMILE_RADIUS = 0.16  # reach of the smile around each corner, fraction of the face width


@dataclass(frozen=True)
class ExpressionFields:
    jaw: np.ndarray  # (N, 2) px per unit jaw opening
    smile: np.ndarray  # (N, 2)
    blink: np.ndarray  # (N, 2)


def face_axes(mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(468, >=2) mesh -> unit 2D vectors e_u (towards the subject's left eye) and e_v (down the face)."""
    right_eye, left_eye = (mesh[eye.lower, :2].mean(0) for eye in EYES)
    e_u = (left_eye - right_eye) / np.linalg.norm(left_eye - right_eye)
    return e_u, np.array([-e_u[1], e_u[0]])


def _jaw_share(rig: HeadRig, e_u: np.ndarray, e_v: np.ndarray) -> np.ndarray:
    """(N,) share of the chin's drop: 1 below the mouth line, 0 above, fading along the jaw and neck."""
    xy, face = rig.points[:, :2].astype(np.float64), rig.face_size
    origin = xy[MOUTH_CORNERS[:2]].mean(0)
    u, v = (xy - origin) @ e_u, (xy - origin) @ e_v
    mid = (xy[LIPS_UPPER_INNER] + xy[LIPS_LOWER_INNER]) / 2 - origin  # (11, 2) the mouth line
    order = np.argsort(mid @ e_u)
    line = np.interp(u, (mid @ e_u)[order], (mid @ e_v)[order])
    half_width = np.abs((xy[MOUTH_CORNERS[:2]] - origin) @ e_u).mean()
    # A sharp split between the lips, widening to a gentle one on the cheeks beside the mouth.
    spread = 0.01 * face + 0.25 * face * np.clip((np.abs(u) - half_width) / (0.3 * face), 0, 1)
    split = smoothstep((v - line + spread) / (2 * spread))
    below_chin = np.maximum(0, v - (xy[CHIN] - origin) @ e_v)
    # The rigid chin drops fully; the soft lower lip drops less towards the mouth corners.
    along_jaw = np.exp(-((u / (0.45 * face)) ** 4))
    taper = 0.3 + 0.7 * np.clip(1 - (u / half_width) ** 2, 0, 1)
    lower_share = along_jaw * (taper + (1 - taper) * smoothstep((v - line) / (0.15 * face)))
    share = split * lower_share * np.exp(-((below_chin / (0.3 * face)) ** 2))
    upper = LIPS_UPPER_OUTER + LIPS_UPPER_INNER + list(rig.mouth_rows[0])
    lower = LIPS_LOWER_OUTER + LIPS_LOWER_INNER + list(rig.mouth_rows[1])
    share[upper] = 0
    share[lower] = lower_share[lower]
    share[MOUTH_CORNERS] = lower_share[MOUTH_CORNERS] / 2
    return share


def _smile(rig: HeadRig, e_u: np.ndarray, e_v: np.ndarray) -> np.ndarray:
    """Mouth corners pulled outwards and up, the skin around them following with a Gaussian falloff."""
    xy, face = rig.points[:, :2].astype(np.float64), rig.face_size
    field = np.zeros_like(xy)
    for corner, outwards in ((MOUTH_CORNERS[0], -e_u), (MOUTH_CORNERS[1], e_u)):
        weight = np.exp(-np.sum((xy - xy[corner]) ** 2, 1) / (SMILE_RADIUS * face) ** 2)
        field += weight[:, None] * face * (SMILE_PULL[0] * outwards + SMILE_PULL[1] * e_v)
    return field


def _blink(rig: HeadRig, e_u: np.ndarray, e_v: np.ndarray) -> np.ndarray:
    """Upper lids down 90 % of the eye opening, lower lids up 10 %. The skin above follows nearly as
    far, so the closed lid shows lid skin rather than a stretched lash line."""
    xy = rig.points[:, :2].astype(np.float64)
    field = np.zeros_like(xy)
    for eye in EYES:
        lower_u, lower_v = xy[eye.lower] @ e_u, xy[eye.lower] @ e_v
        upper_u = xy[eye.upper] @ e_u
        lo, up = np.argsort(lower_u), np.argsort(upper_u)
        opening = np.interp(upper_u, lower_u[lo], lower_v[lo]) - xy[eye.upper] @ e_v  # (7,) px
        for ids, share in ((eye.upper, 0.9), (eye.crease, 0.75), (eye.brow_side, 0.35), (eye.lower, -0.1)):
            at = np.interp(xy[ids] @ e_u, upper_u[up], opening[up], left=0, right=0)
            field[ids] += share * at[:, None] * e_v
    return field


def expression_fields(rig: HeadRig) -> ExpressionFields:
    """The rig's three displacement fields, each (N, 2) px at expression 1."""
    e_u, e_v = face_axes(rig.points[:NUM_POINTS])
    jaw = _jaw_share(rig, e_u, e_v)[:, None] * (JAW_DROP * rig.face_size) * e_v
    return ExpressionFields(*(f.astype(np.float32) for f in (jaw, _smile(rig, e_u, e_v), _blink(rig, e_u, e_v))))
