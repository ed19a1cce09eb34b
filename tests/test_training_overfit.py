"""Overfit: on a handful of real frame pairs the base stage's losses fall markedly within a few
hundred CPU iterations (tiny networks at 64 px, the full objective with the dlib face term)."""
from __future__ import annotations

import json

import pytest
from torch.utils.data import Dataset

from bilayer.training.data import open_dataset
from bilayer.training.loop import Trainer
from tests.test_training import tiny

ITERATIONS, WINDOW = 300, 25


class FixedPairs(Dataset):
    """The first `n` (source, target) pairs a PairDataset draws, frozen: a handful of real frames."""

    def __init__(self, dataset, n: int):
        self.items = []
        for epoch in range(-(-n // len(dataset))):
            dataset.set_epoch(epoch)
            self.items += [dataset[i] for i in range(len(dataset))]
        self.items = self.items[:n]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


@pytest.mark.slow
def test_losses_fall_markedly_when_overfitting_real_frames(dataset_dir, tmp_path):
    cfg = tiny(f"base.iterations={ITERATIONS}", "updater.iterations=0", f"log_every={WINDOW}", "model.inf_channels=8", "model.inf_max_channels=32",
               "checkpoint_every=100000", "image_every=100000")
    Trainer(cfg, FixedPairs(open_dataset(dataset_dir, cfg), 4), tmp_path).run()
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, last = logs[0], logs[-1]  # means over the first and the last WINDOW iterations
    print({k: (round(first[k], 3), round(last[k], 3)) for k in first if "/" in k})
    assert last["G/pixel"] < 0.5 * first["G/pixel"]
    assert last["G/mask"] < 0.5 * first["G/mask"]
    assert last["G/total"] < 0.7 * first["G/total"]
