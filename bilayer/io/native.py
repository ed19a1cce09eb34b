"""Helpers for the native libraries (TFLite, libpng) that log straight to file descriptor 2."""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

#: File descriptor 2 is the process's: threads that silence it take turns, or one could save the
#: other's /dev/null as "the real stderr" and leave it silenced for good.
_STDERR = threading.RLock()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence native start-up logs and warnings that bypass Python's sys.stderr (thread-safe:
    the body runs while other threads wait to silence it too)."""
    with _STDERR:
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
