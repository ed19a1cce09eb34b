"""Deterministic, resumable, sharded data streams for training.

The stream is a pure function of (seed, position): epoch e is a permutation drawn from
`seed + e`, padded to a multiple of the world size and sharded by rank. Each item is fetched as
(index, epoch): the dataset's own per-epoch randomness (`set_epoch`, e.g. `PairDataset` with a
seed) and the global python/numpy/torch RNGs are set from (seed, epoch, index) first. So resuming
at iteration i (position i * per-process batch) reproduces the uninterrupted stream exactly,
whatever the number of loader workers.
"""
from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bilayer.config import ModelConfig
from bilayer.data.frame import Frame, Pair
from bilayer.errors import InputError
from bilayer.training.config import TrainConfig

_MIX = 1_000_003  # mixes (seed, epoch, index) into one per-item seed


class StreamSampler(Sampler):
    """Endless (index, epoch) stream for one rank, starting at `start` items into it."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if size < 1:
            raise InputError("dataset is empty")
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start
        self.per_rank = -(-size // world)  # ceil: short shards are padded by wrapping around

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
            perm = (perm * self.world)[: self.per_rank * self.world]  # pad to a multiple of world
            for i in range(offset, self.per_rank):
                yield perm[self.rank + i * self.world], epoch
            epoch, offset = epoch + 1, 0


class SeededItems(Dataset):
    """dataset[(index, epoch)]: dataset[index] drawn with randomness fixed by (seed, epoch, index).

    Calls `dataset.set_epoch(epoch)` when the dataset has it, and seeds python/numpy/torch from
    (seed, epoch, index); the caller's RNG states are restored afterwards (loading may run in the
    training process).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, epoch = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        seed = ((self.seed * _MIX + epoch) * _MIX + index) % 2**63
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C (SIGINT) reaches the whole process group and schedulers send SIGTERM to every process
    of a job: the trainer handles them (save, stop), so the loader workers ignore them; they end
    with the trainer."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def stream(dataset: Dataset, batch_size: int, seed: int, rank: int, world: int, start: int, workers: int,
           pin: bool) -> Iterator[Pair]:
    """Endless iterator of batches (the dataset's items collated: `Pair`s of batched `Frame`s) for this rank."""
    sampler = StreamSampler(len(dataset), seed, rank, world, start)
    # Own generator: creating the iterator draws the workers' base seed, not from the global RNG.
    loader = DataLoader(SeededItems(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=pin, drop_last=True, generator=torch.Generator().manual_seed(seed),
                        worker_init_fn=_ignore_stop_signals)
    return iter(loader)


def random_pair(cfg: ModelConfig, batch_size: int, generator: torch.Generator) -> Pair:
    """A batch of random pairs of the model's shapes, for training steps without data (benchmarks,
    tests): images and landmark images uniform in [-1, 1], keypoints in [-0.6, 0.6], binary masks."""
    s, k = cfg.image_size, cfg.num_keypoints

    def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(batch_size, *shape, generator=generator) * (high - low) + low

    def frame() -> Frame:
        return Frame(uniform(3, s, s), uniform(cfg.landmark_channels, s, s), uniform(k, 2, low=-0.6, high=0.6),
                     (uniform(1, s, s, low=0.0) > 0.5).float())

    return Pair(frame(), frame())


def open_dataset(root: str | Path, cfg: TrainConfig) -> Dataset:
    """The training pairs of a folder written by `bilayer preprocess`, at the model's resolution
    and with the landmark images of its preprocessing profile."""
    from bilayer.data.dataset import PairDataset  # needs the `data` extra (OpenCV)

    return PairDataset(root, cfg.data, image_size=cfg.model.image_size, profile=cfg.model.preprocessing,
                       seed=cfg.seed)
