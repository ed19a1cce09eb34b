"""The three real models of the pipeline, all shipped inside registry wheels and run on a CPU.

* `FaceDetector`: MediaPipe's full-range BlazeFace (`mediapipe==0.10.21`; later wheels no longer
  ship the .tflite files). Chosen over dlib's HOG detector after measuring both on the sample
  photos rescaled and rotated in 1280x720 frames: it found more faces (incl. a three-quarter view
  that HOG misses) at ~7 ms per frame at any resolution, against 23 ms for HOG on a 640x360
  downscale and 95 ms with HOG's upsampling (docs/data.md).
* `LandmarkPredictor`: dlib's 68-point ensemble-of-regression-trees predictor trained on iBUG
  300-W (the file ships in `face-recognition-models`). Its cost (~2 ms) does not depend on the
  frame size, so it runs on the full-resolution frame.
* `Segmenter`: MediaPipe's selfie segmentation (general model, 256x256 input, the size of our
  crops), the foreground = head + body mask of Sec. 3.4.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bilayer.data.preprocess.geometry import FaceBox
from bilayer.io.native import quiet_stderr

# Box conventions, measured on the sample photos over scales 1-3x and rotations of +-10 degrees
# (the predictor run from a HOG box, then each box compared with the keypoints' box):
# MediaPipe's box is 1.115x the keypoints' box (std 0.05) and centred 0.089 x its side above it;
# dlib's HOG boxes, which the predictor was trained from, are 1.02x and 0.037 above.
MEDIAPIPE_SCALE, MEDIAPIPE_RAISE = 1.115, 0.089
DLIB_RECT_SCALE, DLIB_RECT_RAISE = 1.02, 0.037


@dataclass(frozen=True)
class Detection:
    box: FaceBox  # in the keypoints' convention
    score: float


class FaceDetector:
    """frame (H, W, 3) uint8 RGB -> face detections, largest first."""

    def __init__(self, min_confidence: float = 0.5):
        from mediapipe.python.solutions.face_detection import FaceDetection

        with quiet_stderr():
            self._net = FaceDetection(min_detection_confidence=min_confidence, model_selection=1)
            self._net.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        """Free MediaPipe's graph (its threads and buffers); the detector is unusable afterwards."""
        self._net.close()

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        found = self._detect(frame)
        if found:
            return found
        # The full-range model misses faces that fill the frame (tight crops, close selfies):
        # measured on the sample photos cut to their keypoints' box, and on synthetic clips of
        # tight crops. Framed by a black border of half the frame's side, they are found.
        pad = max(frame.shape[:2]) // 2
        framed = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)))
        return [Detection(FaceBox(d.box.cx - pad, d.box.cy - pad, d.box.size), d.score) for d in self._detect(framed)]

    def _detect(self, frame: np.ndarray) -> list[Detection]:
        h, w = frame.shape[:2]
        found = []
        for d in self._net.process(frame).detections or []:
            rb = d.location_data.relative_bounding_box
            side = max(rb.width * w, rb.height * h) / MEDIAPIPE_SCALE
            cx, cy = (rb.xmin + rb.width / 2) * w, (rb.ymin + rb.height / 2) * h + MEDIAPIPE_RAISE * side
            found.append(Detection(FaceBox(cx, cy, side), float(d.score[0])))
        return sorted(found, key=lambda d: -d.box.size)


def dlib_models_dir() -> Path:
    """The `models/` folder of face-recognition-models, found without importing the package
    (its __init__ needs pkg_resources, gone from setuptools >= 81)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face-recognition-models is not installed (pip install 'bilayer[data]')")
    return Path(spec.submodule_search_locations[0]) / "models"


class LandmarkPredictor:
    """(frame (H, W, 3) uint8 RGB, face box) -> (68, 2) float32 keypoints in frame pixels."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._net = dlib.shape_predictor(str(dlib_models_dir() / "shape_predictor_68_face_landmarks.dat"))

    def __call__(self, frame: np.ndarray, face: FaceBox) -> np.ndarray:
        half = DLIB_RECT_SCALE * face.size / 2
        cx, cy = face.cx, face.cy - DLIB_RECT_RAISE * face.size
        rect = self._dlib.rectangle(round(cx - half), round(cy - half), round(cx + half), round(cy + half))
        shape = self._net(frame, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)  # (68, 2)


class Segmenter:
    """crop (S, S, 3) uint8 RGB -> (S, S) float32 foreground probability in [0, 1]."""

    def __init__(self) -> None:
        from mediapipe.python.solutions.selfie_segmentation import SelfieSegmentation

        with quiet_stderr():
            self._net = SelfieSegmentation(model_selection=0)
            self._net.process(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        """Free MediaPipe's graph (its threads and buffers); the segmenter is unusable afterwards."""
        self._net.close()

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        return np.clip(self._net.process(crop).segmentation_mask, 0, 1)
