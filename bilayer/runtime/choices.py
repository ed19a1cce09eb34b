"""Backends and precisions of the per-frame runners (`backends.RUNNERS`, named "backend/precision"),
without importing torch, so that the CLI offers them as choices while `bilayer --help` stays instant."""
from __future__ import annotations

#: backend -> the precisions it runs at (torch/fp16 is meant for GPUs).
RUNNER_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "fp16", "int8"),
}
BACKENDS: tuple[str, ...] = tuple(RUNNER_PRECISIONS)
PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for ps in RUNNER_PRECISIONS.values() for p in ps))
