"""Frame -> training annotation: smoothed square crop, 68 keypoints in it, foreground mask.

This is the per-frame part of the preprocessing (detect -> keypoints -> crop -> mask) as one
reusable, stateful object: call `reset()` at the start of each clip, then the annotator on each
frame in order. The runtime uses it on driving videos (`with_mask=False` skips segmentation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bilayer.data.landmarks import normalize_keypoints
from bilayer.data.preprocess.detector import FaceDetector, LandmarkPredictor, Segmenter
from bilayer.data.preprocess.geometry import CropBox, FaceBox
from bilayer.data.preprocess.timing import StageTimer
from bilayer.data.preprocess.tracking import BoxSmoother, FaceTracker


@dataclass(frozen=True)
class AnnotatorConfig:
    """Per-frame annotation settings (`bilayer preprocess --set annotator.KEY=VALUE`)."""

    image_size: int = 256  # side of the stored crops
    crop_scale: float = 2.2  # crop side / face size (keypoint box): hair, chin and neck, as VoxCeleb2
    crop_shift: float = 0.2  # crop centre raised by this fraction of the face size (hair)
    detect_every: int = 5  # frames between detections (re-anchoring and loss check)
    min_detection_confidence: float = 0.5
    smooth_min_cutoff: float = 0.4  # One-Euro filter of the crop box, Hz at rest
    smooth_beta: float = 2.0  # cutoff increase per (face size / s) of motion

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.crop_scale <= 1 or self.detect_every < 1:
            raise ValueError("need image_size >= 16, crop_scale > 1, detect_every >= 1")


@dataclass
class Annotation:
    image: np.ndarray  # (S, S, 3) uint8 RGB crop
    keypoints_px: np.ndarray  # (68, 2) float32 pixel coordinates in the crop
    keypoints: np.ndarray  # (68, 2) float32 normalized [-1, 1]
    mask: np.ndarray | None  # (S, S) float32 in [0, 1], None when with_mask=False
    crop_box: CropBox  # in frame pixels
    face: FaceBox  # raw face box in frame pixels (before smoothing)


class FaceAnnotator:
    def __init__(self, cfg: AnnotatorConfig = AnnotatorConfig(), with_mask: bool = True):
        self.cfg = cfg
        self.timer = StageTimer()
        self.tracker = FaceTracker(
            FaceDetector(cfg.min_detection_confidence), LandmarkPredictor(), cfg.detect_every, timer=self.timer
        )
        self.smoother = BoxSmoother(cfg.smooth_min_cutoff, cfg.smooth_beta)
        self.segmenter = Segmenter() if with_mask else None

    def reset(self) -> None:
        """Forget the current track (call between clips)."""
        self.tracker.reset()
        self.smoother.reset()

    def __call__(self, frame: np.ndarray, t: float = 0.0) -> Annotation | None:
        """frame (H, W, 3) uint8 RGB at time t (seconds) -> annotation, or None without a face."""
        track = self.tracker(frame)
        if track is None:
            self.smoother.reset()
            return None
        s = self.cfg.image_size
        with self.timer("crop"):
            box = CropBox.around(self.smoother(track.face, t), self.cfg.crop_scale, self.cfg.crop_shift)
            image = box.crop(frame, s)
            keypoints_px = box.to_crop(track.keypoints, s)
        mask = None
        if self.segmenter is not None:
            with self.timer("mask"):
                mask = self.segmenter(image)
        return Annotation(image, keypoints_px, normalize_keypoints(keypoints_px, s), mask, box, track.face)
