"""Helpers for the native libraries (TFLite, libpng) that log straight to file descriptor 2."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence native start-up logs and warnings that bypass Python's sys.stderr."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
