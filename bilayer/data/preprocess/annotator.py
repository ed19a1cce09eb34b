"""Frame -> training annotation: smoothed square crop, 68 keypoints in it, foreground mask.

This is the per-frame part of the preprocessing (detect -> keypoints -> crop -> mask) as one
reusable, stateful object: call `reset()` at the start of each clip, then the annotator on each
frame in order. The runtime uses it on driving videos (`with_mask=False` skips segmentation).

Profiles (`bilayer.config.Profile`): "bilayer" crops `crop_scale` x the face box raised by
`crop_shift` (OpenCV resampling, pixel-centre keypoint normalisation); "official" makes the inputs
of the authors' released code: `CropBox.official` (2 x the face size raised by 1/6 of it, PIL
bicubic), their keypoint normalisation and their 5-px mask erosion. Crop modes: "smoothed" (the
One-Euro-filtered face box: no crop jitter in videos) or "exact" (each frame's own face box, as
the released code crops every frame independently).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from bilayer.config import PROFILES, Profile
from bilayer.data.landmarks import normalize_keypoints, pixel_keypoints
from bilayer.data.preprocess.detector import FaceDetector, LandmarkPredictor, Segmenter
from bilayer.data.preprocess.geometry import CropBox, FaceBox
from bilayer.timing import StageTimer
from bilayer.data.preprocess.tracking import BoxSmoother, FaceTracker

CropMode = Literal["smoothed", "exact"]
CROP_MODES: tuple[str, ...] = typing.get_args(CropMode)


def _disk_kernel(size: int) -> np.ndarray:
    """(size, size) uint8 disk: offsets -size//2+1 .. size//2 with x^2 + y^2 < (size / 2)^2."""
    r = np.arange(-size // 2 + 1, size // 2 + 1)
    return (r[None] ** 2 + r[:, None] ** 2 < (size / 2) ** 2).astype(np.uint8)


#: The released code's erosion of its segmentation (Graphonomy wrapper): a 5-px disk, once.
OFFICIAL_EROSION_KERNEL = _disk_kernel(5)  # (5, 5), the 5x5 square without its corners


def erode_mask(mask: np.ndarray) -> np.ndarray:
    """(S, S) float32 mask -> the released code's eroded mask (a local minimum over the disk)."""
    return cv2.erode(np.asarray(mask, np.float32), OFFICIAL_EROSION_KERNEL, iterations=1)


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
    keypoints_px: np.ndarray  # (68, 2) float32 pixel coordinates in the crop (pixel centres on integers)
    keypoints: np.ndarray  # (68, 2) float32 normalized [-1, 1], the profile's convention
    mask: np.ndarray | None  # (S, S) float32 in [0, 1] (official: eroded), None when with_mask=False
    crop_box: CropBox  # in frame pixels
    face: FaceBox  # raw face box in frame pixels (before smoothing)


class FaceAnnotator:
    """frame -> `Annotation` with the crop rule, keypoint convention and mask of `profile`; `crop`
    says whether the crop follows the smoothed face box or each frame's own (see the module)."""

    def __init__(self, cfg: AnnotatorConfig = AnnotatorConfig(), with_mask: bool = True,
                 profile: Profile = "bilayer", crop: CropMode = "smoothed"):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
        self.cfg, self.profile, self.crop_mode = cfg, profile, crop
        self.timer = StageTimer()
        self.tracker = FaceTracker(
            FaceDetector(cfg.min_detection_confidence), LandmarkPredictor(), cfg.detect_every, timer=self.timer
        )
        self.smoother = BoxSmoother(cfg.smooth_min_cutoff, cfg.smooth_beta)
        self.segmenter = Segmenter() if with_mask else None

    def close(self) -> None:
        """Free the detector's and segmenter's native resources (MediaPipe graphs hold threads):
        long-running processes (the server) create and drop annotators."""
        self.tracker.detector.close()
        if self.segmenter is not None:
            self.segmenter.close()

    def __enter__(self) -> "FaceAnnotator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        s, official = self.cfg.image_size, self.profile == "official"
        with self.timer("crop"):
            face = track.face if self.crop_mode == "exact" else self.smoother(track.face, t)
            if official:
                box = CropBox.official(face)
                image = box.crop_official(frame, s)
                keypoints = box.normalize_official(track.keypoints)
                keypoints_px = pixel_keypoints(keypoints, s)
            else:
                box = CropBox.around(face, self.cfg.crop_scale, self.cfg.crop_shift)
                image = box.crop(frame, s)
                keypoints_px = box.to_crop(track.keypoints, s)
                keypoints = normalize_keypoints(keypoints_px, s)
        mask = None
        if self.segmenter is not None:
            with self.timer("mask"):
                mask = self.segmenter(image)
                mask = erode_mask(mask) if official else mask
        return Annotation(image, keypoints_px, keypoints, mask, box, track.face)
