"""The typed frame and pair: the one currency between the dataset, training, evaluation and the
runtime (a photo's source face is a `Frame` too).

A `Frame` holds what the networks see of one frame of a talking head (Sec. 3.1): the image, its
landmark image (the keypoints drawn as an RGB "stickman", the embedder's and the discriminator's
pose input), the keypoints themselves (the inference generator's input vector) and the foreground
mask. Fields carry a batch dimension where a batch is meant. Both are NamedTuples, so PyTorch's
default collation batches them field by field.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Frame(NamedTuple):
    image: Tensor  # ([B,] 3, H, W) in [-1, 1]
    landmark_image: Tensor  # ([B,] 3, H, W) in [-1, 1], drawn by bilayer.data.landmarks
    keypoints: Tensor  # ([B,] 68, 2) in [-1, 1] of the crop (x, y)
    mask: Tensor  # ([B,] 1, H, W) in [0, 1], the foreground

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Frame":
        return Frame(*(t.to(device, non_blocking=non_blocking) for t in self))

    def batch(self) -> "Frame":
        """The frame as a batch of one: every field with a leading dimension of 1."""
        return Frame(*(t[None] for t in self))


class Pair(NamedTuple):
    """A training or evaluation pair of one clip: the avatar is made from `source`, `target` is
    the frame to reproduce from its keypoints."""

    source: Frame
    target: Frame

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Pair":
        return Pair(self.source.to(device, non_blocking), self.target.to(device, non_blocking))
