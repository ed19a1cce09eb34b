"""Faces in photos and driving videos, with the same detector, keypoints and crop as preprocessing.

`FaceAnnotator` (bilayer.data.preprocess) does online detection + dlib 68-point keypoints + a
One-Euro-smoothed VoxCeleb-like crop box (+ MediaPipe segmentation on the CPU), with the crop rule,
keypoint convention, landmark image and mask of the model's preprocessing profile
(`ModelConfig.preprocessing`). The source photo gets the mask (the embedder sees a
background-free source, as in training) and its own exact crop (one frame: nothing to smooth); a
driving video gets one annotator for the whole clip, so its crop follows the head smoothly instead
of being re-detected independently on every frame (no crop jitter), unless asked for "exact" crops.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bilayer.config import Profile
from bilayer.data.frame import Frame
from bilayer.data.landmarks import landmark_image
from bilayer.errors import InputError
from bilayer.timing import StageTimer

if TYPE_CHECKING:
    from bilayer.data.preprocess.annotator import CropMode, FaceAnnotator
    from bilayer.data.preprocess.geometry import CropBox


@dataclass
class SourceFace:
    image: np.ndarray  # (S, S, 3) uint8 RGB crop
    keypoints: np.ndarray  # (68, 2) float32 in [-1, 1]
    mask: np.ndarray  # (S, S) float32 in [0, 1]
    photo: np.ndarray  # (H, W, 3) uint8 RGB, the whole decoded photo
    box: CropBox  # the crop in photo pixels (may overhang the photo), as `Annotation.crop_box`
    profile: Profile = "bilayer"  # how the crop, keypoints and mask were made, and the landmark image

    def frame(self) -> Frame:
        """The model's input: a batch of one `Frame` (image and landmark image (1, 3, S, S) in
        [-1, 1], keypoints (1, 68, 2), mask (1, 1, S, S))."""
        s = self.image.shape[0]
        keypoints = torch.from_numpy(self.keypoints)[None]
        return Frame(
            image=torch.from_numpy(self.image).permute(2, 0, 1)[None].float() / 127.5 - 1,
            landmark_image=landmark_image(keypoints, s, self.profile),
            keypoints=keypoints,
            mask=torch.from_numpy(self.mask)[None, None].float(),
        )


def annotator(size: int, with_mask: bool, profile: Profile = "bilayer", crop: CropMode = "smoothed") -> FaceAnnotator:
    """A FaceAnnotator producing size x size crops of `profile` (loads the detector models)."""
    from bilayer.data.preprocess.annotator import AnnotatorConfig, FaceAnnotator

    return FaceAnnotator(AnnotatorConfig(image_size=size), with_mask, profile, crop)


def read_photo(photo: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; one-line InputError naming the file when it cannot be decoded."""
    from bilayer.io.media import IMAGE_EXTENSIONS, MediaReader

    path = Path(photo)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{path}: not a photo (expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})")
    with MediaReader(path) as reader:
        return next(reader.frames())[2]


#: (size, profile) -> the loaded photo annotator and the lock that serializes its use. Loading the
#: detectors takes about half a second; one set serves every photo of a process.
_PHOTO_ANNOTATORS: dict[tuple[int, Profile], tuple[threading.Lock, FaceAnnotator]] = {}
_PHOTO_ANNOTATORS_LOCK = threading.Lock()
#: The annotator's stages -> the names of an avatar's initialization stages.
FACE_STAGES = {"detect": "detection", "keypoints": "landmarks", "crop": "crop", "mask": "mask"}


def photo_annotator(size: int, profile: Profile) -> tuple[threading.Lock, FaceAnnotator]:
    """The process's annotator for source photos of `profile` at `size` (exact crop, with mask),
    loaded on first use, and the lock to hold while using it."""
    with _PHOTO_ANNOTATORS_LOCK:
        if (size, profile) not in _PHOTO_ANNOTATORS:
            _PHOTO_ANNOTATORS[size, profile] = threading.Lock(), annotator(size, True, profile, crop="exact")
        return _PHOTO_ANNOTATORS[size, profile]


def crop_source(photo: str | Path | np.ndarray, size: int, profile: Profile = "bilayer",
                timer: StageTimer | None = None) -> SourceFace:
    """Detect the main face of a photo, crop it like the training data of `profile` (official: the
    released code's exact rule), keypoints and mask. A one-line InputError when no face is found
    or it is smaller than MIN_FACE_SIZE (the preprocessing's minimum: a smaller face gives no
    usable avatar). `timer` gets the time of each stage (`FACE_STAGES`)."""
    from bilayer.data.preprocess.geometry import MIN_FACE_SIZE

    frame = photo if isinstance(photo, np.ndarray) else read_photo(photo)
    lock, face = photo_annotator(size, profile)
    with lock:
        face.reset()
        before = dict(face.timer.seconds)
        found = face(frame)
        if timer is not None:
            for stage, name in FACE_STAGES.items():
                timer.seconds[name] += face.timer.seconds.get(stage, 0.0) - before.get(stage, 0.0)
    name = "photo" if isinstance(photo, np.ndarray) else str(photo)
    if found is None:
        raise InputError(f"{name}: no face found")
    if found.face.size < MIN_FACE_SIZE:
        raise InputError(f"{name}: face too small ({found.face.size:.0f} px, at least {MIN_FACE_SIZE:.0f} px)")
    return SourceFace(found.image, found.keypoints, found.mask, frame, found.crop_box, profile)
