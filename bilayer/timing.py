"""Per-stage wall-clock accounting: preprocessing's progress bar and benchmark, an avatar's
initialization stages (`Avatar.init_stages_ms`)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Callable, Iterator

#: A stage hook: `with stage("embedder"): ...` (a `StageTimer`, or `untimed`).
Stage = Callable[[str], AbstractContextManager]


def untimed(name: str) -> AbstractContextManager:
    """The stage hook that records nothing."""
    return nullcontext()


class StageTimer:
    """Accumulates seconds per named stage: `with timer("detect"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def milliseconds(self) -> dict[str, float]:
        """Stage -> ms, in the order the stages first ran."""
        return {name: 1000 * s for name, s in self.seconds.items()}
