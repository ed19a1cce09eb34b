"""Output files: checked before any long work, written atomically (a hidden sibling renamed into
place only when complete). Missing output folders are created when the file is written."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from bilayer.errors import InputError


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
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so formats are guessed alike; its folder
    created if missing); on success it replaces `path` with the usual permissions, on any exception
    it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (with a final newline), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return path
