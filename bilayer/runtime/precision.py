"""The precision an avatar runs at, chosen from what the machine has.

An avatar has two parts: the one-time networks of its initialization (embedder, projections,
texture generator, updater: autocast) and its per-frame runner ("backend/precision",
`backends.RUNNERS`). `plan` maps the requested precision to both:

* "auto" (the default of animate, demo, serve and export): bfloat16 for both where the device
  computes it natively (a CPU with AMX-BF16 or AVX512-BF16, a CUDA GPU with bf16), float32
  elsewhere (emulated bf16 is slower than float32). ONNX Runtime has no bf16 kernels on CPUs, so
  its runner stays fp32 there while the one-time networks still use bf16.
* an explicit precision: that runner, with the one-time networks in bf16 for "bf16" and in fp16
  for "fp16" on a GPU, float32 otherwise.

The quality check of "auto" (`Avatar.initialize`): a non-finite bf16 initialization is redone in
float32, and the bf16 runner's frames must stay within `MIN_PSNR_DB` of the float32 runner's at
the source pose, else that float32 runner renders the frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bilayer.hardware import cpu_info, native_bf16

#: The least PSNR (dB) of reduced-precision frames against float32 that "auto" accepts.
MIN_PSNR_DB = 40.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class Plan:
    init_dtype: torch.dtype  # autocast dtype of the one-time networks (float32: none)
    frames: str  # the runner's precision ("fp32", "bf16", ...)
    reason: str  # why, printed with the choice

    def __str__(self) -> str:
        return f"{self.reason}; one-time networks {NAMES[self.init_dtype]}"


def plan(precision: str, backend: str, device: torch.device) -> Plan:
    """The one-time networks' dtype and the runner's precision for a requested precision."""
    if precision != "auto":
        low = precision == "bf16" or (precision == "fp16" and device.type == "cuda")
        return Plan(DTYPES[precision] if low else torch.float32, precision, "requested")
    native = native_bf16(device)
    if native is None:
        where = cpu_info()["name"] if device.type == "cpu" else str(device)
        return Plan(torch.float32, "fp32", f"no native bf16 on {where}")
    frames = "bf16" if backend == "torch" else "fp32"
    note = "" if frames == "bf16" else f"; {backend} runs fp32 frames"
    return Plan(torch.bfloat16, frames, f"{native}{note}")
