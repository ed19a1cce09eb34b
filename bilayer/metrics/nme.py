"""NME (paper Sec. 4): normalized mean error of the head pose in the synthesized image.

"We use the same network which was used for the annotation of the dataset to evaluate the pose of
the synthesized image. We normalize the error, which is a mean euclidean distance between the
predicted and the target points, by the distance between the eyes in the target pose, multiplied
by 10." So, per pair:

    NME = 10 * mean_k |p_k - t_k| / |mean(t_36..41) - mean(t_42..47)|

p: the 68 keypoints detected on the synthesized frame, t: those detected on the target frame,
both by the preprocessing detector (MediaPipe face box + dlib's 68-point predictor,
`bilayer.data.preprocess.detector`), each image on its own. Re-detecting the target, as the
official code does (`losses/pose_matching.py`), makes a perfect output score exactly 0 and cancels
the detector's own bias; when no face is found in the target, its dataset keypoints (from the same
predictor, tracked on the full frame) stand in. The eye distance is between the eye centres
(means of the six points of each eye), as in the official code, which leaves out the factor 10
the paper reports with.

A synthesized frame in which no face is found cannot be scored: it gets NaN, is excluded from the
mean, and the evaluation reports the fraction of such frames next to the NME.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from bilayer.io.images import to_uint8

RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # iBUG-68: the subject's right eye first
NME_SCALE = 10.0

#: (H, W, 3) uint8 RGB -> (68, 2) pixel keypoints, or None when no face is found.
KeypointDetector = Callable[[np.ndarray], "np.ndarray | None"]


def eye_distance(keypoints: Tensor) -> Tensor:
    """(B, 68, 2) -> (B,) distance between the two eye centres."""
    return (keypoints[:, RIGHT_EYE].mean(1) - keypoints[:, LEFT_EYE].mean(1)).norm(dim=-1)


def nme(pred_keypoints: Tensor, target_keypoints: Tensor) -> Tensor:
    """(B, 68, 2), (B, 68, 2) in one coordinate frame -> (B,) NME (the ratio is scale-free)."""
    error = (pred_keypoints - target_keypoints).norm(dim=-1).mean(1)  # (B,)
    return NME_SCALE * error / eye_distance(target_keypoints)


class PreprocessingDetector:
    """The dataset's annotator, run independently on each image: largest face box, then 68 points."""

    def __init__(self) -> None:
        from bilayer.data.preprocess.detector import FaceDetector, LandmarkPredictor

        self.detect, self.predict = FaceDetector(), LandmarkPredictor()

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        faces = self.detect(image)
        return self.predict(image, faces[0].box) if faces else None


class NME:
    """PairMetric: keypoints re-detected on `pred` against those re-detected on `target`."""

    def __init__(self, detector: KeypointDetector):
        self.detector = detector

    def __call__(self, pred: Tensor, target: Tensor, target_keypoints: Tensor) -> Tensor:
        """pred, target (B, 3, H, W) in [-1, 1]; target_keypoints (B, 68, 2) normalized, used where
        no face is found in the target -> (B,) NME, NaN where none is found in `pred`."""
        from bilayer.data.landmarks import pixel_keypoints

        annotated = pixel_keypoints(target_keypoints.cpu().numpy(), pred.shape[-1])  # (B, 68, 2) pixels
        scores = []
        for p_image, t_image, t_annotated in zip(to_uint8(pred), to_uint8(target), annotated, strict=True):
            found = self.detector(p_image)
            if found is None:
                scores.append(math.nan)
                continue
            t = self.detector(t_image)
            t = t_annotated if t is None else t
            scores.append(float(nme(torch.from_numpy(found)[None], torch.from_numpy(t)[None])))
        return torch.tensor(scores)
