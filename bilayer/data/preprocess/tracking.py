"""Online face tracking: one detection every k frames, keypoints every frame, a smoothed box.

Between detections the face box of frame t-1 (from its 68 keypoints) initializes the predictor on
frame t, as video landmark trackers do; the detector re-anchors the track every `detect_every`
frames and tells when the face is gone. The crop follows a One-Euro-filtered face box (Casiez et
al., CHI 2012): strong smoothing when the head is still (no jitter), little lag when it moves.
Everything is causal, so the same classes serve offline preprocessing and live driving videos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bilayer.data.preprocess.detector import Detection, FaceDetector, LandmarkPredictor
from bilayer.data.preprocess.geometry import FaceBox
from bilayer.timing import StageTimer


class BoxSmoother:
    """One-Euro filter on (cx, cy, size), in units of the face size so that the parameters do not
    depend on the resolution. `min_cutoff` (Hz) sets the smoothing at rest, `beta` how fast the
    cutoff rises with speed (in face sizes per second)."""

    def __init__(self, min_cutoff: float = 0.4, beta: float = 2.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._unit = self._x = self._dx = self._t = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1 / (2 * math.pi * cutoff)
        return 1 / (1 + tau / dt)

    def __call__(self, box: FaceBox, t: float) -> FaceBox:
        """Smoothed box for measurement `box` at time `t` (seconds, increasing)."""
        if self._x is None or t <= self._t:
            self._unit = box.size
            self._x, self._dx, self._t = box.as_array() / self._unit, np.zeros(3), t
            return box
        dt, self._t = t - self._t, t
        x = box.as_array() / self._unit
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = a * x + (1 - a) * self._x
        return FaceBox(*(self._x * self._unit))


@dataclass(frozen=True)
class Track:
    keypoints: np.ndarray  # (68, 2) float32 in frame pixels
    face: FaceBox  # raw box of these keypoints


class FaceTracker:
    """frame (H, W, 3) uint8 RGB -> `Track` of the main face, or None when no face is found.

    The main face is the largest detection when a track starts, then the detection that overlaps
    the current track; a track that no detection confirms is dropped.
    """

    def __init__(self, detector: FaceDetector, predictor: LandmarkPredictor, detect_every: int = 5,
                 min_iou: float = 0.3, timer: StageTimer | None = None):
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector, self.predictor = detector, predictor
        self.detect_every, self.min_iou = detect_every, min_iou
        self.timer = timer or StageTimer()
        self.reset()

    def reset(self) -> None:
        self._face: FaceBox | None = None
        self._since_detection = 0

    def __call__(self, frame: np.ndarray) -> Track | None:
        if self._face is None or self._since_detection >= self.detect_every:
            self._since_detection = 0
            with self.timer("detect"):
                init = self._match(self.detector(frame))
            if init is None:
                self._face = None
                return None
        else:
            init = self._face
        self._since_detection += 1
        with self.timer("keypoints"):
            keypoints = self.predictor(frame, init)
        face = FaceBox.from_keypoints(keypoints)
        if face.iou(init) < self.min_iou:  # the predictor ran away from its initialization
            self._face = None
            return None
        self._face = face
        return Track(keypoints, face)

    def _match(self, detections: list[Detection]) -> FaceBox | None:
        if not detections:
            return None
        if self._face is None:
            return detections[0].box  # largest
        best = max(detections, key=lambda d: d.box.iou(self._face))
        # Re-anchor the predictor on the detection: starting from the track's own keypoint box
        # lets that box drift (grow) over a turned head, detection after detection.
        return best.box if best.box.iou(self._face) >= self.min_iou else None
