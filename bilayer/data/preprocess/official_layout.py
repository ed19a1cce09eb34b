"""`bilayer preprocess --official-layout DATA_ROOT`: data prepared for the authors' released code
-> our dataset store, without detecting faces again (docs/data.md).

Their layout (bilayer-model README and `datasets/voxceleb2.py`):

    DATA_ROOT/imgs/{train,test}/PERSON/VIDEO/SEQUENCE/FRAME.jpg       square face crops, any side s
    DATA_ROOT/keypoints/{train,test}/PERSON/VIDEO/SEQUENCE/FRAME.npy  (68+, 2+) float (x, y[, z]) in pixels
    DATA_ROOT/segs/{train,test}/PERSON/VIDEO/SEQUENCE/FRAME.png       foreground masks, 8-bit

Each SEQUENCE becomes one clip of identity PERSON that keeps its split folder. A frame is made as
their loader makes it: image and mask resized to 256 with PIL's bicubic filter, keypoints
`(x / s - 0.5) * 2` in float32 (= x / s * 2 - 1, the "official" profile of config.Profile). A frame
needs all three files (their loader intersects the file names); frames whose files cannot be read
or have the wrong shape are left out, a sequence without a usable frame is skipped with a reason.
The store's machinery makes the import resumable like any `bilayer preprocess` run.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bilayer.config import to_dict
from bilayer.data.landmarks import NUM_KEYPOINTS, pixel_keypoints
from bilayer.data.preprocess.geometry import FaceBox
from bilayer.data.preprocess.pipeline import Result, Summary, parallel_results, record_or_skip, run_jobs
from bilayer.timing import StageTimer
from bilayer.data.store import (
    ClipArrays, ClipRecord, ClipWriter, DatasetStore, SourceKey, clip_file_for, clip_id_for,
)
from bilayer.errors import InputError, SkipInput

FOLDERS = {"imgs": ".jpg", "keypoints": ".npy", "segs": ".png"}  # kind -> frame file suffix
SPLITS = ("train", "test")
PROFILE = "official"  # the keypoint convention of the imported data (config.Profile)
_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # broken or hostile files


@dataclass(frozen=True)
class OfficialLayoutConfig:
    """Import settings (`bilayer preprocess --official-layout DATA_ROOT --set KEY=VALUE`)."""

    image_size: int = 256  # side of the stored frames and masks (their loader's --image_size)
    fps: float = 25.0  # the layout records no frame rate; VoxCeleb2's is 25
    jpeg_quality: int = 95  # frames that are resized or not RGB JPEG are encoded again

    def __post_init__(self) -> None:
        if self.image_size < 1 or self.fps <= 0 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("need image_size >= 1, fps > 0 and jpeg_quality in [1, 100]")

    def settings(self) -> dict:
        """What settings.json records: these settings and the data's profile."""
        return {**to_dict(self), "profile": PROFILE}


@dataclass(frozen=True)
class Sequence:
    """One SEQUENCE folder: the clip it becomes and the version of its files."""

    data_root: Path  # absolute
    rel: Path  # SPLIT/PERSON/VIDEO/SEQUENCE
    key: SourceKey  # source: the imgs/ folder; size: number of frame files; mtime_ns: the newest

    @property
    def split(self) -> str:
        return self.rel.parts[0]

    @property
    def identity(self) -> str:
        return self.rel.parts[1]

    @property
    def clip_id(self) -> str:
        return clip_id_for(self.key.source, "_".join(self.rel.parts[1:]))

    def folder(self, kind: str) -> Path:
        """Its folder under imgs/, keypoints/ or segs/."""
        return self.data_root / kind / self.rel

    def files(self, kind: str) -> dict[str, Path]:
        """Frame name -> file, in its folder under `kind`."""
        return {f.stem: f for f in _frame_files(self.folder(kind), FOLDERS[kind])}


def _frame_files(folder: Path, suffix: str) -> list[Path]:
    """The frame files of one kind of a sequence (none when the folder is missing)."""
    return [f for f in folder.iterdir() if f.suffix == suffix and f.is_file()] if folder.is_dir() else []


def _sequence_key(data_root: Path, rel: Path) -> SourceKey:
    """Changes when a frame file is added, removed or rewritten."""
    stats = [f.stat() for kind, suffix in FOLDERS.items() for f in _frame_files(data_root / kind / rel, suffix)]
    return SourceKey(str(data_root / "imgs" / rel), len(stats), max((s.st_mtime_ns for s in stats), default=0))


def find_sequences(data_root: str | Path) -> list[Sequence]:
    """The SEQUENCE folders under DATA_ROOT/imgs/{train,test}, sorted; an `InputError` when
    DATA_ROOT is not in the official layout."""
    root = Path(data_root).absolute()
    if not root.is_dir():
        raise InputError(f"{data_root}: no such folder")
    for kind in FOLDERS:
        if not (root / kind).is_dir():
            raise InputError(f"{data_root}: no {kind}/ folder (official layout: DATA_ROOT/[imgs, keypoints, "
                             f"segs]/[train, test]/PERSON/VIDEO/SEQUENCE/FRAME.[jpg, npy, png])")
    rels = sorted(
        p.relative_to(root / "imgs") for split in SPLITS for p in (root / "imgs" / split).glob("*/*/*")
        if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(root / "imgs").parts)
    )
    if not rels:
        raise InputError(f"{root / 'imgs'}: no sequence folders (expected train/ or test/PERSON/VIDEO/SEQUENCE)")
    return [Sequence(root, rel, _sequence_key(root, rel)) for rel in rels]


class FrameProblem(Exception):
    """Why one frame is left out (one line, without the path)."""


def read_image(path: Path, size: int, jpeg_quality: int) -> tuple[bytes, int]:
    """A frame image -> (JPEG of its size x size RGB resize, its side s). The file's own bytes
    when it already is a size x size RGB JPEG that decoders read alike (no EXIF rotation)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.width != image.height:
                raise FrameProblem(f"image is {image.width}x{image.height}, not square")
            s = image.width
            if (image.format, image.mode, s) == ("JPEG", "RGB", size) and \
                    image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
                return data, s
            rgb = image.convert("RGB").resize((size, size), Image.BICUBIC)  # their loader: resize, BICUBIC
    except _PIL_ERRORS as e:
        raise FrameProblem(f"cannot read image ({e})") from None
    jpeg = cv2.imencode(".jpg", np.asarray(rgb)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1]
    return jpeg.tobytes(), s


def read_keypoints(path: Path, side: int) -> np.ndarray:
    """A keypoints file of an image of side `side` -> (68, 2) float32 official normalized (x, y),
    computed as their loader does: float32 `(x / s - 0.5) * 2`."""
    try:
        points = np.load(path)  # no pickles
    except (OSError, ValueError, EOFError) as e:
        raise FrameProblem(f"cannot read keypoints ({e})") from None
    shape = getattr(points, "shape", None)
    if not isinstance(points, np.ndarray) or points.dtype.kind not in "fiu" or points.ndim != 2 \
            or shape[0] < NUM_KEYPOINTS or shape[1] < 2:
        raise FrameProblem(f"keypoints of shape {shape}, need ({NUM_KEYPOINTS}+, 2+) numbers")
    xy = points.astype(np.float32)[:NUM_KEYPOINTS, :2]  # (68, 2) pixels
    if not np.isfinite(xy).all():
        raise FrameProblem("keypoints are not finite")
    return (xy / np.float32(side) - np.float32(0.5)) * np.float32(2)


def read_mask(path: Path, size: int) -> bytes:
    """A seg file -> 8-bit PNG of its size x size PIL bicubic resize (read as 8-bit grey)."""
    try:
        with Image.open(path) as seg:
            grey = seg.convert("L").resize((size, size), Image.BICUBIC)
    except _PIL_ERRORS as e:
        raise FrameProblem(f"cannot read seg ({e})") from None
    return cv2.imencode(".png", np.asarray(grey), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()


def _frame_order(names: set[str]) -> tuple[list[str], list[int]]:
    """Frame names in order, and their frame indices: numeric names by number, others by name
    (their position)."""
    if all(re.fullmatch(r"\d{1,9}", n) for n in names):
        ordered = sorted(names, key=int)
        return ordered, [int(n) for n in ordered]
    ordered = sorted(names)
    return ordered, list(range(len(ordered)))


def _write_frames(seq: Sequence, cfg: OfficialLayoutConfig, writer: ClipWriter,
                  timer: StageTimer) -> tuple[ClipArrays, int, float]:
    """The usable frames of `seq` -> writer; returns the clip's arrays, the side s of its first
    frame and its median face size (keypoint box side, in source pixels), or raises SkipInput."""
    files = {kind: seq.files(kind) for kind in FOLDERS}
    for kind, found in files.items():
        if not found:
            raise SkipInput(seq.key.source, f"no {FOLDERS[kind]} files in {seq.folder(kind)}")
    names, numbers = _frame_order(set(files["imgs"]))
    keypoints, boxes, index, faces, problems = [], [], [], [], []
    for name, number in zip(names, numbers):
        try:
            missing = [kind for kind in ("keypoints", "segs") if name not in files[kind]]
            if missing:
                raise FrameProblem(f"no {' and no '.join(missing)} file")
            with timer("image"):
                jpeg, side = read_image(files["imgs"][name], cfg.image_size, cfg.jpeg_quality)
            with timer("keypoints"):
                points = read_keypoints(files["keypoints"][name], side)  # (68, 2)
            with timer("mask"):
                png = read_mask(files["segs"][name], cfg.image_size)
        except FrameProblem as e:
            problems.append(f"{name}: {e}")
            continue
        writer.add_frame(jpeg, png)
        keypoints.append(points)
        boxes.append((0.0, 0.0, side))  # the crop is the whole source image
        index.append(number)
        faces.append(FaceBox.from_keypoints((points + 1) / 2 * side).size)
    if not index:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise SkipInput(seq.key.source, f"no usable frame among {len(names)} ({problems[0]}{more})")
    kp = np.stack(keypoints)  # (T, 68, 2)
    arrays = ClipArrays(pixel_keypoints(kp, cfg.image_size), kp, np.array(boxes, np.float32),
                        np.array(index, np.int32))
    return arrays, int(boxes[0][2]), round(float(np.median(faces)), 2)


def import_sequence(seq: Sequence, cfg: OfficialLayoutConfig, store: DatasetStore) -> Result:
    """Write the clip of one sequence; problems of the sequence become a SkipRecord, a full disk
    (`DiskFull`) stops the run."""
    key, timer = seq.key, StageTimer()

    def clip() -> ClipRecord:
        file = clip_file_for(seq.clip_id)
        with ClipWriter(store.tmp_path(seq.clip_id), store.root / file) as writer:
            arrays, side, face_size = _write_frames(seq, cfg, writer, timer)
            writer.commit(arrays)
        return ClipRecord(seq.clip_id, seq.identity, key.source, key.size, key.mtime_ns, file, writer.num_frames,
                          cfg.fps, side, side, face_size, split=seq.split)

    return Result(record_or_skip(key, clip), dict(timer.seconds))


_worker: tuple[OfficialLayoutConfig, DatasetStore] | None = None


def _init_worker(cfg: OfficialLayoutConfig, root: str) -> None:
    global _worker
    cv2.setNumThreads(1)  # one process per core
    _worker = (cfg, DatasetStore(root))


def _import_in_worker(seq: Sequence) -> Result:
    return import_sequence(seq, *_worker)


def run_official_import(data_root: str | Path, out: str | Path, cfg: OfficialLayoutConfig = OfficialLayoutConfig(),
                        workers: int = 1, progress: bool = True, retry_skipped: bool = False) -> Summary:
    """Import every sequence of DATA_ROOT not already in the dataset at `out` (resumable like
    `run_preprocess`: a sequence is redone only when its files change; earlier skips are reported
    again, or redone with `retry_skipped`). A folder made from videos is refused (its profile)."""
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    store = DatasetStore(out)
    sequences = find_sequences(data_root)
    here = lambda: lambda seq: import_sequence(seq, cfg, store)  # noqa: E731
    results = lambda todo: parallel_results(  # noqa: E731
        todo, workers, here, _import_in_worker, _init_worker, (cfg, str(store.root)))
    return run_jobs(sequences, store, cfg.settings(), results, retry_skipped, progress, "sequence")
