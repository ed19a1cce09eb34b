"""Output files: checked before any long work, written atomically (a hidden sibling renamed into
place only when complete). Missing output folders are created when the file is written.

A full disk is a `DiskFull` (a one-line `InputError` naming the file, the free space and about how
much is needed), never a traceback: `disk_full_error` turns the OSError of any write inside it
into one, `atomic_path`, `write_json` and `append_line` use it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from bilayer.errors import InputError

#: errno values of a full disk: no space left on the device, or the user's disk quota used up.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MIN_NEEDED = 4096  # a file or folder takes at least one block (4 kB on common file systems)


class DiskFull(InputError):
    """No room for a write. A problem of the disk, never of an input: a preprocessing run stops
    instead of skipping the input it was writing."""


def format_size(n: float) -> str:
    """Bytes for people: 512 B, 4.1 kB, 1.2 GB (powers of 1000)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def free_space(path: str | Path) -> int:
    """Free bytes (for unprivileged users) on the file system of `path` (its nearest existing folder)."""
    path = Path(path).absolute()
    return shutil.disk_usage(next(p for p in (path, *path.parents) if p.is_dir())).free


def _caused_by_full_disk(error: BaseException | None) -> bool:
    """Whether `error` is, or was raised while handling, an OSError of a full disk (torch.save,
    for one, reports its file's failed write as a RuntimeError raised during that OSError)."""
    while error is not None:
        if isinstance(error, DiskFull):  # already reported, with its own path
            return False
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return False


def check_free_space(path: str | Path, needed: int) -> None:
    """A `DiskFull` naming `path` when its file system has less than `needed` bytes free; for
    writers that cannot report a full disk in time (TensorBoard writes from its own thread, which
    prints a traceback when a write fails)."""
    if free_space(path) < max(needed, MIN_NEEDED):
        raise _disk_full(path, needed)


def _disk_full(path: str | Path, needed: int) -> DiskFull:
    """The one-line error: `path`, the free space now and about `needed` bytes (one block at least)."""
    needed = max(needed, MIN_NEEDED)
    return DiskFull(f"{path}: disk full ({format_size(free_space(path))} free, about {format_size(needed)} needed)")


@contextlib.contextmanager
def disk_full_error(path: str | Path, needed: int | Callable[[], int]) -> Iterator[None]:
    """Turn an error of a full disk (ENOSPC, EDQUOT) inside into a one-line `DiskFull` naming
    `path`, the free space and about how many bytes are `needed` (a callable is asked once the
    disk is full, e.g. for the size of what was written so far); other errors pass unchanged.
    The free space is measured when the error arrives, before any partial file is removed."""
    try:
        yield
    except Exception as e:
        if not _caused_by_full_disk(e):
            raise
        raise _disk_full(path, needed() if callable(needed) else needed) from None


def _size(path: Path) -> int:
    """The size of file `path`, 0 when there is none."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(path: str | Path) -> Path:
    """`path` as an output folder: an existing folder, or one that can be created (no file in the
    way), writable. A one-line `InputError` otherwise."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    needed = "" if existing == path else f" (needed for {path})"
    if not existing.is_dir():
        raise InputError(f"{existing}: not a folder{needed}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{existing}: folder not writable{needed}")
    return path


def check_output_file(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as an output file: ending in one of `suffixes` (when given), not a folder, its folder
    existing or creatable. A one-line `InputError` otherwise."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: output must end in {'/'.join(suffixes)}")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file name")
    check_output_folder(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so formats are guessed alike; its folder
    created if missing); on success it replaces `path` with the usual permissions, on any exception
    it is removed. A full disk is a `DiskFull` naming `path`, with about `needed` bytes (the
    writer's estimate) or the size of the file it replaces needed, whichever is larger."""
    path, tmp_path = Path(path), None
    try:
        with disk_full_error(path, lambda: max(needed, _size(path))):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600
            os.replace(tmp_path, path)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (with a final newline), atomically."""
    path = Path(path)
    text = json.dumps(obj, indent=2) + "\n"
    with atomic_path(path, len(text.encode())) as tmp:
        tmp.write_text(text)
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append `line` (ending in a newline) to a text file, atomically with respect to other
    processes (one write under an flock) and crashes (fsync): other readers see the whole line
    or none. On a full disk the file is cut back to its old end and a `DiskFull` names it."""
    path, data = Path(path), line.encode()
    with disk_full_error(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            end = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)  # releases the flock
