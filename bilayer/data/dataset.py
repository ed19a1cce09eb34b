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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bilayer.data.augment import apply_color, color_matrix
from bilayer.config import Profile
from bilayer.data.landmarks import draw_profile_landmarks, flip_keypoints
from bilayer.data.store import ClipReader, ClipRecord, DatasetStore
from bilayer.errors import InputError

Split = Literal["train", "test", "all"]


@dataclass(frozen=True)
class DatasetConfig:
    image_size: int = 256  # frames are stored at 256 and resized on load when smaller
    min_gap: int = 0  # |target - source| in stored frames, at least ...
    max_gap: int | None = None  # ... and at most (None: anywhere in the clip)
    flip_probability: float = 0.5  # horizontal flip of both frames; never on the test split
    # One random colour transform for both frames of a pair (augment.py; not in the paper: for
    # data with few identities); never on the test split. 0: off.
    hue_jitter: float = 0.0  # degrees, at most 180
    saturation_jitter: float = 0.0  # relative, below 1
    brightness_jitter: float = 0.0  # relative, below 1
    test_fraction: float = 0.05  # fraction of identities held out
    seed: int | None = None  # None: fresh randomness; an int makes item i of epoch e reproducible
    # The landmark image style of the MODEL trained or evaluated on the pairs (config.Profile). Data
    # of another profile still loads, with a warning: its keypoints follow another convention.
    profile: Profile = "bilayer"

    def __post_init__(self) -> None:
        if self.min_gap < 0 or (self.max_gap is not None and self.max_gap < self.min_gap):
            raise ValueError(f"need 0 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if not 0 <= self.test_fraction <= 1 or not 0 <= self.flip_probability <= 1:
            raise ValueError("test_fraction and flip_probability must be in [0, 1]")
        if not (0 <= self.hue_jitter <= 180 and 0 <= self.saturation_jitter < 1 and 0 <= self.brightness_jitter < 1):
            raise ValueError("need hue_jitter in [0, 180] degrees, saturation_jitter and brightness_jitter in [0, 1)")

    @property
    def color_jitter(self) -> bool:
        return bool(self.hue_jitter or self.saturation_jitter or self.brightness_jitter)


def identity_split(identity: str, test_fraction: float) -> Literal["train", "test"]:
    """Deterministic split of an identity: its SHA-1 read as a number in [0, 1)."""
    u = int(hashlib.sha1(identity.encode()).hexdigest()[:12], 16) / 16**12
    return "test" if u < test_fraction else "train"


class PairDataset(Dataset):
    """Item i: a random (source, target) pair of clip i as a dict of tensors

        {source,target}_image      (3, S, S) float32 in [-1, 1]
        {source,target}_keypoints  (68, 2)   float32 in [-1, 1] (x, y), grid_sample convention
        {source,target}_landmarks  (3, S, S) float32 in [-1, 1], the landmark image
        {source,target}_mask       (1, S, S) float32 in [0, 1]

    with S = cfg.image_size. Clips with fewer than min_gap + 1 frames are left out.
    """

    def __init__(self, root: str | Path, split: Split = "train", cfg: DatasetConfig = DatasetConfig()):
        self.root, self.split, self.cfg = Path(root), split, cfg
        if not (self.root / "manifest.jsonl").exists():
            raise InputError(f"{self.root}: not a dataset (no manifest.jsonl; run `bilayer preprocess`)")
        store = DatasetStore(self.root)
        self.clips: list[ClipRecord] = [
            c for c in store.clips() if c.num_frames > cfg.min_gap and split in ("all", self.clip_split(c))
        ]
        if not self.clips:
            raise InputError(f"{self.root}: no clips in split {split!r} (test_fraction {cfg.test_fraction}, "
                             f"min_gap {cfg.min_gap})")
        data_profile = store.profile()
        if data_profile != cfg.profile:
            print(f"warning: {self.root}: data of profile {data_profile!r} read for a model of profile "
                  f"{cfg.profile!r} (keypoints and landmark images less faithful)", file=sys.stderr)
        self.epoch = 0

    def clip_split(self, clip: ClipRecord) -> str:
        """The split recorded with the clip, else its identity's (identity_split)."""
        return clip.split or identity_split(clip.identity, self.cfg.test_fraction)

    @property
    def identities(self) -> set[str]:
        return {c.identity for c in self.clips}

    def set_epoch(self, epoch: int) -> None:
        """Draw different pairs each epoch when cfg.seed is set (call it like DistributedSampler's)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def _rng(self, index: int) -> np.random.Generator:
        if self.cfg.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.cfg.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        clip, rng, cfg = self.clips[index], self._rng(index), self.cfg
        last = clip.num_frames - 1
        gap = int(rng.integers(cfg.min_gap, min(last, cfg.max_gap if cfg.max_gap is not None else last) + 1))
        first = int(rng.integers(0, last - gap + 1))
        source, target = (first, first + gap) if rng.random() < 0.5 else (first + gap, first)
        augment = self.split != "test"  # train or all
        flip = augment and rng.random() < cfg.flip_probability
        out: dict[str, Tensor] = {}
        with ClipReader(self.root / clip.file) as reader:
            keypoints = reader.array("keypoints")  # (T, 68, 2)
            for role, i in (("source", source), ("target", target)):
                out.update(self._frame(reader, keypoints[i], i, flip, role))
        if augment and cfg.color_jitter:
            matrix = color_matrix(rng, cfg.hue_jitter, cfg.saturation_jitter, cfg.brightness_jitter)
            for role in ("source", "target"):
                out[f"{role}_image"] = apply_color(out[f"{role}_image"], matrix)
        return out

    def _frame(self, reader: ClipReader, keypoints: np.ndarray, i: int, flip: bool, role: str) -> dict[str, Tensor]:
        s = self.cfg.image_size
        image = _decode(reader.jpeg(i), cv2.IMREAD_COLOR, s, f"{reader.path}: frame {i}")[..., ::-1]  # (S, S, 3) RGB
        mask = _decode(reader.mask_png(i), cv2.IMREAD_GRAYSCALE, s, f"{reader.path}: mask {i}")  # (S, S)
        if flip:
            # Exact mirror for our keypoints ((x + 0.5) / S * 2 - 1); official ones (x / S * 2 - 1)
            # mirror to -x - 2 / S, so there the flipped keypoints sit 1 px at 256 right of the face.
            image, mask, keypoints = image[:, ::-1], mask[:, ::-1], flip_keypoints(keypoints)
        landmarks = draw_profile_landmarks(keypoints, s, self.cfg.profile)  # (S, S, 3) uint8
        return {
            f"{role}_image": _to_tensor(image),
            f"{role}_keypoints": torch.from_numpy(np.ascontiguousarray(keypoints, np.float32)),
            f"{role}_landmarks": _to_tensor(landmarks),
            f"{role}_mask": torch.from_numpy(mask.astype(np.float32) / 255)[None],
        }


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
