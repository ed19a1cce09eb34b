"""On-disk layout of a preprocessed dataset: clip files in shards plus an append-only manifest.

    DATASET/
      manifest.jsonl     one JSON line per finished clip (the source of truth)
      skipped.jsonl      one JSON line per skipped input: {"source", "size", "mtime_ns", "reason"}
      settings.json      the preprocessing settings of every clip (PreprocessConfig, or an import's) and
                         "profile" (config.Profile), the keypoint convention of the data
      shards/3f/<clip_id>.zip
      tmp/               clip files being written (one per running worker)

A clip file is an uncompressed ZIP (frames are already JPEG/PNG) read member by member, so one
training sample reads only its two frames:

    frames/000000.jpg ...   (T) 256x256 RGB crops, JPEG
    masks/000000.png ...    (T) foreground masks, 8-bit PNG (255 = head and body)
    keypoints_px.npy        (T, 68, 2) float32 pixel coordinates in the crop
    keypoints.npy           (T, 68, 2) float32 normalized [-1, 1] (grid_sample, align_corners=False)
    crop_boxes.npy          (T, 3) float32 (x0, y0, side) of each crop in source-frame pixels
    frame_index.npy         (T,) int32 index of each kept frame in the source

Crash safety: a clip is written to tmp/, fsynced and moved into its shard with os.replace; only
then is its manifest line appended (one write of one line with O_APPEND under an flock, then fsync:
`bilayer.io.files.append_line`). A full disk stops the run with a one-line `DiskFull` and leaves
neither the clip's temp file nor a torn line behind.
A `kill -9` therefore loses at most the clips in progress; a resumed run skips every input whose
(source, size, mtime_ns) already has a manifest line. Shards are the first two hex digits of the
SHA-1 of the clip id (like git's object store): deterministic whatever the number of workers or
the order of completion, and ~550 clips per shard for VoxCeleb2's 140k clips.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, TypeVar

import numpy as np

from bilayer.config import check_recorded_settings, read_recorded_settings
from bilayer.errors import InputError
from bilayer.io.files import append_line, disk_full_error, write_json

MANIFEST, SKIPPED, SHARDS, TMP = "manifest.jsonl", "skipped.jsonl", "shards", "tmp"
SETTINGS = "settings.json"  # the preprocessing config every clip of the dataset was made with
#: Settings keys that datasets gained after their first release -> the value a settings.json
#: without the key holds implicitly (a dataset made before profiles existed holds our own data).
IMPLICIT_SETTINGS: dict[str, Any] = {"profile": "bilayer"}
R = TypeVar("R")


@dataclass(frozen=True)
class SourceKey:
    """Identifies one input file version; an input is redone only when its key changes."""

    source: str  # absolute path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "SourceKey":
        path = Path(path).absolute()
        st = path.stat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ClipRecord:
    """One manifest line."""

    clip_id: str
    identity: str
    source: str
    size: int
    mtime_ns: int
    file: str  # relative to the dataset root
    num_frames: int
    fps: float
    source_width: int
    source_height: int
    face_size: float  # median face size (keypoint box side) in source pixels
    # "train" / "test" when the source fixes the clip's split (the official layout's folders);
    # None: the split is a function of the identity (dataset.identity_split). Absent in old lines.
    split: str | None = None

    @property
    def key(self) -> SourceKey:
        return SourceKey(self.source, self.size, self.mtime_ns)


@dataclass(frozen=True)
class SkipRecord:
    """One line of skipped.jsonl."""

    source: str
    size: int
    mtime_ns: int
    reason: str

    @property
    def key(self) -> SourceKey:
        return SourceKey(self.source, self.size, self.mtime_ns)


@dataclass
class ClipArrays:
    """Per-frame annotations of one clip (T kept frames)."""

    keypoints_px: np.ndarray  # (T, 68, 2) float32
    keypoints: np.ndarray  # (T, 68, 2) float32 in [-1, 1]
    crop_boxes: np.ndarray  # (T, 3) float32
    frame_index: np.ndarray  # (T,) int32


def clip_id_for(source: str | Path, name: str | None = None) -> str:
    """Readable, unique and stable id: `name` (default: the file stem) + hash of the absolute path."""
    path = Path(source).absolute()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if name is None else name)[:48] or "clip"
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"


def clip_file_for(clip_id: str) -> str:
    """Path of a clip file relative to the dataset root."""
    return f"{SHARDS}/{hashlib.sha1(clip_id.encode()).hexdigest()[:2]}/{clip_id}.zip"


def _append_record(path: Path, obj: dict) -> None:
    """Append one JSON line atomically with respect to other processes, crashes and a full disk."""
    append_line(path, json.dumps(obj, sort_keys=True) + "\n")


def _read_records(path: Path, record: type[R]) -> Iterator[R]:
    """The records of a .jsonl file; a torn last line (crash mid-write) is ignored, any other line
    that is not such a record is an `InputError` naming the file and the line."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                item = record(**json.loads(raw))
            except (ValueError, TypeError) as e:  # not JSON, not an object, wrong fields
                reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                raise InputError(f"{path}: line {number} is not a valid {record.__name__} ({reason})") from None
            yield item


def _repair_tail(path: Path) -> None:
    """Cut a torn last line so that the next append starts on a fresh line."""
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        if data and not data.endswith(b"\n"):
            os.ftruncate(fd, data.rfind(b"\n") + 1)
            os.fsync(fd)
    finally:
        os.close(fd)


class DatasetStore:
    """Reads and appends the manifest and skip report of a dataset folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def prepare(self) -> None:
        """Create the folders, repair torn lines and drop temp files of dead writers."""
        with disk_full_error(self.root, 0):
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
            (self.root / SHARDS).mkdir(exist_ok=True)
        for name in (MANIFEST, SKIPPED):
            _repair_tail(self.root / name)
        for tmp in (self.root / TMP).glob("*.zip"):
            pid = int(tmp.stem.rsplit("-", 1)[-1])
            if not _pid_alive(pid):
                tmp.unlink(missing_ok=True)

    def settings(self) -> dict[str, Any] | None:
        """The recorded settings, keys of IMPLICIT_SETTINGS filled in; None when none are recorded."""
        recorded = read_recorded_settings(self.root / SETTINGS)
        return None if recorded is None else {**IMPLICIT_SETTINGS, **recorded}

    def profile(self) -> str:
        """The profile (config.Profile) of the dataset's keypoints: "bilayer" unless recorded."""
        return (self.settings() or IMPLICIT_SETTINGS)["profile"]

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Record the preprocessing settings on the first run; refuse to add clips made with other
        settings to a dataset (an `InputError` naming the other profile, or listing the differences).
        A key of IMPLICIT_SETTINGS missing on either side reads as its implicit value, so a dataset
        recorded before the key existed resumes. A dataset written before settings were recorded
        takes the current ones."""
        recorded, profile = self.settings(), {**IMPLICIT_SETTINGS, **settings}["profile"]
        if recorded is not None and recorded["profile"] != profile:
            raise InputError(f"{self.root}: holds data of profile {recorded['profile']!r}, not {profile!r} "
                             f"({SETTINGS}); use a new folder")
        if not check_recorded_settings(self.root / SETTINGS, settings, implicit=IMPLICIT_SETTINGS):
            write_json(self.root / SETTINGS, settings)

    def clips(self) -> list[ClipRecord]:
        """Manifest records, the latest one per source, sorted by clip id."""
        latest = {r.source: r for r in _read_records(self.root / MANIFEST, ClipRecord)}
        return sorted(latest.values(), key=lambda r: r.clip_id)

    def skipped(self) -> dict[SourceKey, SkipRecord]:
        return {s.key: s for s in _read_records(self.root / SKIPPED, SkipRecord)}

    def add_clip(self, record: ClipRecord) -> None:
        _append_record(self.root / MANIFEST, asdict(record))

    def add_skip(self, record: SkipRecord) -> None:
        _append_record(self.root / SKIPPED, asdict(record))

    def tmp_path(self, clip_id: str) -> Path:
        return self.root / TMP / f"{clip_id}-{os.getpid()}.zip"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ClipWriter:
    """Streams the frames of one clip into a temp ZIP; `commit` moves it into place atomically.
    A failed write removes the temp file; a full disk is a `DiskFull` naming the clip file. As a
    context manager, any exception in its block (the caller's too) removes the temp file."""

    def __init__(self, tmp_path: Path, final_path: Path):
        self.tmp_path, self.final_path = tmp_path, final_path
        with disk_full_error(final_path, 0):
            self._zip = zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_STORED)
        self.num_frames = 0
        self.bytes = 0  # given to the ZIP so far

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Writes to the temp file: any failure removes it; a full disk is a `DiskFull` (about the
        clip's bytes so far needed: a lower bound)."""
        try:
            with disk_full_error(self.final_path, lambda: self.bytes):
                yield
        except BaseException:
            self.abort()
            raise

    def _write(self, name: str, data: bytes) -> None:
        self.bytes += len(data)  # counted first: a full disk's message includes the failed write
        # A fixed member date keeps the file a pure function of its content (reproducible runs).
        self._zip.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

    def add_frame(self, jpeg: bytes, mask_png: bytes) -> None:
        with self._writing():
            self._write(f"frames/{self.num_frames:06d}.jpg", jpeg)
            self._write(f"masks/{self.num_frames:06d}.png", mask_png)
        self.num_frames += 1

    def commit(self, arrays: ClipArrays) -> None:
        with self._writing():
            for name, value in asdict(arrays).items():
                buf = io.BytesIO()
                np.save(buf, value)
                self._write(f"{name}.npy", buf.getvalue())
            self._zip.close()
            with open(self.tmp_path, "rb") as f:
                os.fsync(f.fileno())
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_path, self.final_path)

    def __enter__(self) -> "ClipWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Remove the temp file (again: nothing happens). The ZIP is closed without caring whether
        finishing it works: its file is gone, and the disk may be full."""
        self.tmp_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._zip.close()


class ClipReader:
    """Random access to the frames and annotations of one clip file. A missing or damaged file is an
    `InputError` naming it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except OSError as e:
            raise InputError(f"{self.path}: cannot read the clip file ({e.strerror})") from None
        except zipfile.BadZipFile as e:
            raise InputError(f"{self.path}: damaged clip file ({e})") from None

    def __enter__(self) -> "ClipReader":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def _read(self, member: str) -> bytes:
        try:
            return self._zip.read(member)
        except (KeyError, zipfile.BadZipFile) as e:  # member missing, bad CRC: the message names it
            raise InputError(f"{self.path}: damaged clip file ({e.args[0]})") from None

    def array(self, name: str) -> np.ndarray:
        """One of the ClipArrays fields, e.g. "keypoints" -> (T, 68, 2)."""
        return np.load(io.BytesIO(self._read(f"{name}.npy")))

    def jpeg(self, i: int) -> bytes:
        return self._read(f"frames/{i:06d}.jpg")

    def mask_png(self, i: int) -> bytes:
        return self._read(f"masks/{i:06d}.png")
