"""Process-group helpers for `torchrun` (StyleGAN3/EDM-style `distributed.py`).

One process per GPU (NCCL) or per CPU worker (gloo). Without torchrun's environment everything
degrades to a single process: rank 0 of world 1, no collectives.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def setup(device: str = "auto") -> torch.device:
    """Join the torchrun process group (if launched by torchrun) and return this process's device."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def print0(*args: object, **kwargs: object) -> None:
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (identity with one process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm statistics) to every process."""
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
