"""A PNG contact sheet of an animation: evenly spaced frames as rows of source | driver | result."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bilayer.io.images import labelled_grid, write_png


class ContactSheet:
    """Collects panels of a stream of unknown length in bounded memory.

    Keeps every `stride`-th panel; when more than 2 x `rows` are kept, every other one is dropped
    and the stride doubles. At the end `rows` panels evenly spaced over the kept ones (and so over
    the whole stream) make the sheet.
    """

    def __init__(self, rows: int = 6, labels: tuple[str, ...] = ("source", "driver", "result")):
        if rows < 1:
            raise ValueError("a contact sheet needs at least one row")
        self.rows, self.labels = rows, labels
        self.stride = 1
        self.kept: list[tuple[int, np.ndarray]] = []  # (frame index, (S, n*S, 3) uint8 panel)

    def add(self, index: int, panel: np.ndarray) -> None:
        if index % self.stride:
            return
        self.kept.append((index, panel.copy()))
        if len(self.kept) > 2 * self.rows:
            self.stride *= 2
            self.kept = [(i, p) for i, p in self.kept if i % self.stride == 0]

    def write(self, path: str | Path) -> Path:
        """Write the sheet as a PNG (atomically): a header naming the columns, then `rows` panels."""
        import cv2

        if not self.kept:
            raise ValueError("no frames were added to the contact sheet")
        picks = np.linspace(0, len(self.kept) - 1, min(self.rows, len(self.kept))).round().astype(int)
        rows = []
        for k in picks:
            index, panel = self.kept[k][0], self.kept[k][1].copy()
            cv2.putText(panel, f"#{index}", (4, panel.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255),
                        1, cv2.LINE_AA)
            rows.append(panel)
        return write_png(path, labelled_grid(rows, self.labels))
