"""Standing BatchNorm statistics (Sec. 3.5, App. A.1; following BigGAN [7]).

Before inference the running statistics of every BatchNorm layer are replaced by plain averages
of batch statistics over N forward passes (the paper uses 500 mini-batches), then frozen: the
layers are left in eval mode so later calls only read them.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def standing_statistics(model: nn.Module, batches: Iterable, forward: Callable[[object], object], num_batches: int = 500) -> int:
    """Recompute BN stats of `model` by calling `forward(batch)` on up to `num_batches` batches.

    Returns the number of batches used. Leaves `model` in eval mode with the new statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches seen
        m.train()
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            forward(batch)
            used += 1
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    if used == 0:
        raise ValueError("standing_statistics: no batches were given")
    return used
