"""Which pairs a dataset folder yields and how they are augmented (no heavy imports: the training
config nests it, and `bilayer train --dry-run` loads no OpenCV)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "test", "all"]


@dataclass(frozen=True)
class DatasetConfig:
    """`PairDataset`'s settings (`TrainConfig.data`). The train/test split is by identity (Sec. 4):
    an identity's split is a function of its name and `test_fraction`, unless its clips record one
    (data imported from the official layout's train/ and test/ folders)."""

    split: Split = "train"  # "all": every clip, whatever its split
    test_fraction: float = 0.05  # fraction of identities held out
    min_gap: int = 0  # |target - source| in stored frames, at least ...
    max_gap: int | None = None  # ... and at most (None: anywhere in the clip)
    flip_probability: float = 0.5  # horizontal flip of both frames; never on the test split
    # One random colour transform for both frames of a pair (augment.py; not in the paper: for
    # data with few identities); never on the test split. 0: off.
    hue_jitter: float = 0.0  # degrees, at most 180
    saturation_jitter: float = 0.0  # relative, below 1
    brightness_jitter: float = 0.0  # relative, below 1

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
