"""Training pairs (Sec. 3.1): a source and a target frame of the same clip, with their keypoints,
landmark images and foreground masks, read from a dataset written by `bilayer preprocess`.

The train/test split is by identity, as in the paper ("the test set ... does not intersect with
the train set in terms of videos or identities", Sec. 4): an identity's split is a deterministic
function of its name, so it never changes when clips are added. Clips whose source fixes their
split (data imported from the official layout's train/ and test/ folders) keep it.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bilayer.config import Profile
from bilayer.data.augment import apply_color, color_matrix
from bilayer.data.config import DatasetConfig
from bilayer.data.frame import Frame, Pair
from bilayer.data.landmarks import draw_profile_landmarks, flip_keypoints
from bilayer.data.store import ClipReader, ClipRecord, DatasetStore
from bilayer.errors import InputError


def identity_split(identity: str, test_fraction: float) -> Literal["train", "test"]:
    """Deterministic split of an identity: its SHA-1 read as a number in [0, 1)."""
    u = int(hashlib.sha1(identity.encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test_fraction else "train"


class PairDataset(Dataset):
    """Item i: a random `Pair` (source and target `Frame`) of clip i, at `image_size`, with the
    landmark images of `profile` (the model's preprocessing, config.Profile). Clips with fewer
    than min_gap + 1 frames are left out. `seed` None: fresh randomness; an int makes item i of
    epoch e reproducible (call `set_epoch(e)`)."""

    def __init__(self, root: str | Path, cfg: DatasetConfig = DatasetConfig(), *, image_size: int = 256,
                 profile: Profile = "bilayer", seed: int | None = None):
        self.root, self.cfg = Path(root), cfg
        self.image_size, self.profile, self.seed = image_size, profile, seed
        if not (self.root / "manifest.jsonl").exists():
            raise InputError(f"{self.root}: not a dataset (no manifest.jsonl; run `bilayer preprocess`)")
        store = DatasetStore(self.root)
        self.clips: list[ClipRecord] = [
            c for c in store.clips() if c.num_frames > cfg.min_gap and cfg.split in ("all", self.clip_split(c))
        ]
        if not self.clips:
            raise InputError(f"{self.root}: no clips in split {cfg.split!r} (test_fraction {cfg.test_fraction}, "
                             f"min_gap {cfg.min_gap})")
        data_profile = store.profile()
        if data_profile != profile:
            print(f"warning: {self.root}: data of profile {data_profile!r} read for a model of profile "
                  f"{profile!r} (keypoints and landmark images less faithful)", file=sys.stderr)
        self.epoch = 0

    def clip_split(self, clip: ClipRecord) -> str:
        """The split recorded with the clip, else its identity's (identity_split)."""
        return clip.split or identity_split(clip.identity, self.cfg.test_fraction)

    @property
    def identities(self) -> set[str]:
        return {c.identity for c in self.clips}

    def set_epoch(self, epoch: int) -> None:
        """Draw different pairs each epoch when a seed is set (call it like DistributedSampler's)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> Pair:
        clip, rng, cfg = self.clips[index], self._rng(index), self.cfg
        last = clip.num_frames - 1
        gap = int(rng.integers(cfg.min_gap, min(last, cfg.max_gap if cfg.max_gap is not None else last) + 1))
        first = int(rng.integers(0, last - gap + 1))
        source, target = (first, first + gap) if rng.random() < 0.5 else (first + gap, first)
        augment = cfg.split != "test"  # train or all
        flip = augment and rng.random() < cfg.flip_probability
        with ClipReader(self.root / clip.file) as reader:
            keypoints = reader.array("keypoints")  # (T, 68, 2)
            pair = Pair(self._frame(reader, keypoints[source], source, flip),
                        self._frame(reader, keypoints[target], target, flip))
        if augment and cfg.color_jitter:
            matrix = color_matrix(rng, cfg.hue_jitter, cfg.saturation_jitter, cfg.brightness_jitter)
            pair = Pair(*(f._replace(image=apply_color(f.image, matrix)) for f in pair))
        return pair

    def frame(self, clip: ClipRecord, i: int) -> Frame:
        """Stored frame `i` of `clip` as it is (no augmentation): (3, S, S), (68, 2), ..."""
        with ClipReader(self.root / clip.file) as reader:
            return self._frame(reader, reader.array("keypoints")[i], i, False)

    def _frame(self, reader: ClipReader, keypoints: np.ndarray, i: int, flip: bool) -> Frame:
        s = self.image_size
        image = _decode(reader.jpeg(i), cv2.IMREAD_COLOR, s, f"{reader.path}: frame {i}")[..., ::-1]  # (S, S, 3) RGB
        mask = _decode(reader.mask_png(i), cv2.IMREAD_GRAYSCALE, s, f"{reader.path}: mask {i}")  # (S, S)
        if flip:
            # Exact mirror for our keypoints ((x + 0.5) / S * 2 - 1); official ones (x / S * 2 - 1)
            # mirror to -x - 2 / S, so there the flipped keypoints sit 1 px at 256 right of the face.
            image, mask, keypoints = image[:, ::-1], mask[:, ::-1], flip_keypoints(keypoints)
        landmark_image = draw_profile_landmarks(keypoints, s, self.profile)  # (S, S, 3) uint8
        return Frame(
            image=_to_tensor(image),
            landmark_image=_to_tensor(landmark_image),
            keypoints=torch.from_numpy(np.ascontiguousarray(keypoints, np.float32)),
            mask=torch.from_numpy(mask.astype(np.float32) / 255)[None],
        )


def _decode(data: bytes, flags: int, size: int, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise InputError(f"{what} cannot be decoded (damaged clip file)")
    if image.shape[0] != size:
        shrink = image.shape[0] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


def _to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1] (converted in numpy: cheaper per sample)."""
    return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
