"""Rank-0 run logging: TensorBoard scalars and image grids, plus one JSON line per log step."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from bilayer.errors import InputError

#: Columns of the image grid, left to right (all (B, C, H, W) in [-1, 1]; masks in [0, 1]).
GRID_COLUMNS = ("source", "target", "lf", "hf", "texture", "mask", "output")


def image_grid(columns: dict[str, Tensor], rows: int = 4) -> Tensor:
    """One row per sample, one column per GRID_COLUMNS entry -> (3, rows * H, 7 * W) in [0, 1]."""
    tiles = []
    for name in GRID_COLUMNS:
        x = columns[name][:rows].detach().float().cpu()
        if name == "mask":
            x = x.expand(-1, 3, -1, -1) * 2 - 1
        tiles.append(x)
    grid = torch.cat(tiles, dim=3)  # (rows, 3, H, 7W)
    return ((torch.cat(list(grid), dim=1) + 1) / 2).clamp(0, 1)  # (3, rows * H, 7W)


class RunLogger:
    """Writes RUN_DIR/tb (TensorBoard) and RUN_DIR/log.jsonl; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("TensorBoard logging needs the tensorboard package: pip install 'bilayer[train]'") from None
            self.writer = SummaryWriter(str(run_dir / "tb"))
            self.jsonl = open(run_dir / "log.jsonl", "a")

    def scalars(self, stage: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{stage}/{name}", value, step)
        self.jsonl.write(json.dumps({"stage": stage, "iteration": step, **values}) + "\n")
        self.jsonl.flush()

    def images(self, stage: str, step: int, columns: dict[str, Tensor]) -> None:
        if self.enabled:
            self.writer.add_image(f"{stage}/samples", image_grid(columns), step)

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
