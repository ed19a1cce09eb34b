"""Detect -> keypoints -> crop -> mask -> shards (docs/data.md).

Reusable pieces: `FaceAnnotator` (frame -> crop, 68 keypoints, mask) built on `FaceTracker`
(online detection + keypoints) and `BoxSmoother` (online One-Euro box filter). The dataset writer
(`pipeline.run_preprocess`) is imported from its module, so that the runtime, which uses the
annotator on photos and driving videos, does not load it.
"""
from bilayer.data.preprocess.annotator import Annotation, AnnotatorConfig, FaceAnnotator
from bilayer.data.preprocess.detector import FaceDetector, LandmarkPredictor, Segmenter
from bilayer.data.preprocess.geometry import CropBox, FaceBox
from bilayer.data.preprocess.tracking import BoxSmoother, FaceTracker, Track

__all__ = [
    "Annotation", "AnnotatorConfig", "BoxSmoother", "CropBox", "FaceAnnotator", "FaceBox", "FaceDetector",
    "FaceTracker", "LandmarkPredictor", "Segmenter", "Track",
]
