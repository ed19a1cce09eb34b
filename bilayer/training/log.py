"""Rank-0 run logging: TensorBoard scalars and image grids, plus one JSON line per log step."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from bilayer.errors import InputError
from bilayer.io.files import append_line, check_free_space, disk_full_error

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
    """Writes RUN_DIR/tb (TensorBoard) and RUN_DIR/log.jsonl (whole lines only); a no-op on ranks
    other than 0. A full disk is a one-line `DiskFull` naming the file."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.tb, self.jsonl = run_dir / "tb", run_dir / "log.jsonl"
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("TensorBoard logging needs the tensorboard package: pip install 'bilayer[train]'") from None
            with self._tensorboard(0):
                self.writer = SummaryWriter(str(self.tb))

    @contextlib.contextmanager
    def _tensorboard(self, needed: int) -> Iterator[None]:
        """A TensorBoard write of about `needed` bytes. Its background thread writes the events
        and prints a traceback when that fails, so room is checked before the write."""
        check_free_space(self.tb, needed)
        with disk_full_error(self.tb, needed):
            yield

    def scalars(self, stage: str, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"stage": stage, "iteration": step, **values}) + "\n"
        with self._tensorboard(len(line)):
            for name, value in values.items():
                self.writer.add_scalar(f"{stage}/{name}", value, step)
        append_line(self.jsonl, line)

    def images(self, stage: str, step: int, columns: dict[str, Tensor]) -> None:
        if self.enabled:
            grid = image_grid(columns)
            with self._tensorboard(grid.numel()):  # as 8-bit pixels: more than their PNG
                self.writer.add_image(f"{stage}/samples", grid, step)

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            with self._tensorboard(len(text.encode())):
                self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
