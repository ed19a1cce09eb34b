"""What the machine computes fast, read from the machine (never assumed): the CPU's name and speed
flags, and whether a device computes bfloat16 natively. The runtime's and the trainer's "auto"
precisions and the benchmarks' reports are built on it."""
from __future__ import annotations

import platform
from functools import cache

import torch

#: /proc/cpuinfo flags that decide the fast paths (and that benchmarks report).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


@cache
def cpu_info() -> dict:
    """{"name": the CPU model, "flags": the `SPEED_FLAGS` it has} (Linux /proc/cpuinfo; elsewhere
    the platform's processor name and flags from PyTorch's CPU probes)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                  "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
        flags = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    return {"name": name, "flags": [f for f in SPEED_FLAGS if f in flags]}


def native_bf16(device: torch.device) -> str | None:
    """What computes bf16 natively on `device` ("AMX-BF16", "AVX512-BF16", "CUDA"), or None."""
    if device.type == "cuda":
        return "CUDA" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX-BF16"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None
