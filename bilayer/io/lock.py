"""One writer per output folder: `FolderLock` holds an exclusive `flock` on FOLDER/.lock.

A dataset folder (`bilayer preprocess`, held by the process that appends its manifest) and a
training run folder (`bilayer train`, held by rank 0) each take one for their whole run, so a
second writer stops at once with a one-line error naming the folder and the holder's pid (written
into the lock file) instead of writing the same files. The kernel drops an flock when its holder
exits, however it ends: a lock file left by a killed run (`kill -9`) never blocks the next one, and
nothing has to be cleaned up. Readers (training's dataset, evaluation) take no lock.
"""
from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path
from typing import BinaryIO

from bilayer.errors import InputError
from bilayer.io.files import disk_full_error

LOCK_FILE = ".lock"
_held: weakref.WeakSet[FolderLock] = weakref.WeakSet()  # the locks this process holds


class FolderLock:
    """Exclusive, non-blocking lock on a folder (created if missing) for one writing process;
    `acquire`/`release` (both idempotent) or `with FolderLock(folder):`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._file: BinaryIO | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> FolderLock:
        """Take the lock; a one-line `InputError` naming the folder and the holder's pid when
        another process (or another FolderLock of this one) holds it."""
        if self._file is not None:
            return self
        pid = f"{os.getpid()}\n".encode()
        with disk_full_error(self.path, len(pid)):
            self.folder.mkdir(parents=True, exist_ok=True)
            file = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = file.read(64).decode(errors="replace").strip()
                file.close()
                raise InputError(f"{self.folder}: in use by another bilayer process "
                                 f"(pid {holder if holder.isdigit() else 'unknown'}); "
                                 f"wait for it to finish or stop it") from None
            try:  # the pid over the old one, then cut: a reader sees one pid, never an empty file
                os.pwrite(file.fileno(), pid, 0)
                os.ftruncate(file.fileno(), len(pid))
            except BaseException:
                file.close()
                raise
        self._file = file
        _held.add(self)
        return self

    def release(self) -> None:
        """Give the lock back (nothing happens when it is not held)."""
        if self._file is None:
            return
        # LOCK_UN, not only close: a forked child may still share the descriptor.
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None
        _held.discard(self)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _forget_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) shares the lock's open file, which would keep the
    folder locked after its parent is killed: the child closes its copy (no LOCK_UN, which would
    release the parent's lock too)."""
    for lock in list(_held):
        lock._file.close()
        lock._file = None
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
