"""Value-range conversions shared by the metrics: the model works in [-1, 1], metrics in [0, 1]
or 8-bit RGB (what a detector or a PNG sees)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def to_unit_range(image: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped (generator outputs may overshoot)."""
    return ((image + 1) / 2).clamp(0, 1)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 RGB, rounded to the nearest level."""
    return (to_unit_range(images.detach().float()) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def labelled_grid(rows: list[np.ndarray], labels: tuple[str, ...]) -> np.ndarray:
    """Stack (S, n*S, 3) uint8 rows under a 24-px black header naming the n columns."""
    import cv2

    grid = np.concatenate(rows)
    header = np.zeros((24, grid.shape[1], 3), np.uint8)
    width = grid.shape[1] // len(labels)
    for i, label in enumerate(labels):
        cv2.putText(header, label, (i * width + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([header, grid])


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write (H, W, 3) uint8 RGB as a PNG, atomically (the file appears only when complete)."""
    import cv2

    from bilayer.io.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"{path}: could not write the PNG")
    return path
