"""`bilayer preprocess`: inputs -> annotated clips in a resumable, sharded dataset (docs/data.md).

Steps per input: decode (PyAV / OpenCV) -> track the main face and crop it per frame
(FaceAnnotator) -> encode JPEG frames + PNG masks into a clip file -> append a manifest line.
Each input is one clip: a video, or a photo as a one-frame clip.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol, TypeVar

import cv2
import numpy as np

from bilayer.config import Profile, to_dict
from bilayer.data.preprocess.annotator import AnnotatorConfig, FaceAnnotator
from bilayer.data.preprocess.geometry import MIN_FACE_SIZE
from bilayer.data.store import (
    ClipArrays, ClipRecord, ClipWriter, DatasetStore, SkipRecord, SourceKey, clip_file_for, clip_id_for,
)
from bilayer.errors import InputError, SkipInput
from bilayer.io.files import DiskFull
from bilayer.io.lock import FolderLock
from bilayer.io.media import MediaReader, is_media


@dataclass(frozen=True)
class PreprocessConfig:
    """Clip-level settings (`bilayer preprocess --set KEY=VALUE`, e.g. `annotator.detect_every=3`)."""

    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    # How crops, keypoints and masks are made (bilayer.config.Profile): "official" reproduces the
    # authors' released code, for data meant for models of ModelConfig.preprocessing="official".
    profile: Profile = "bilayer"
    min_face_size: float = MIN_FACE_SIZE  # median face size (keypoint box side) in source pixels
    min_frames: int = 1  # fewer frames with a face -> the clip is skipped
    frame_step: int = 1  # keep every n-th frame
    max_frames: int | None = None  # keep at most this many frames (VoxCeleb2-HQ: 250)
    jpeg_quality: int = 95
    # How a clip's identity (the unit of the train/test split) is named:
    # folder: first folder below the INPUT folder the file was found in (VoxCeleb2's
    #   id00012/<video>/00001.mp4 -> id00012); the file stem for files given directly or lying
    #   at the top of an INPUT folder.  parent: the file's folder name.  stem: the file name.
    identity_from: Literal["folder", "parent", "stem"] = "folder"

    def __post_init__(self) -> None:
        if self.frame_step < 1 or self.min_frames < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise ValueError("frame_step, min_frames and max_frames must be >= 1")


@dataclass(frozen=True)
class Job:
    path: Path  # absolute
    identity: str
    key: SourceKey  # the file version this job annotates


def _identity(path: Path, root: Path | None, rule: str) -> str:
    if rule == "stem":
        return path.stem
    if rule == "parent":
        return path.parent.name
    rel = path.relative_to(root).parts if root is not None else ()
    return rel[0] if len(rel) > 1 else path.stem


def expand_inputs(inputs: list[str | Path], identity_from: str = "folder") -> list[Job]:
    """Files and folders (searched recursively for videos and photos) -> jobs sorted by path."""
    found: dict[Path, str] = {}
    for item in inputs:
        path = Path(item).absolute()
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                hidden = any(p.startswith(".") for p in f.relative_to(path).parts)
                if f.is_file() and is_media(f) and not hidden:
                    found.setdefault(f, _identity(f, path, identity_from))
        elif path.is_file():
            found.setdefault(path, _identity(path, None, identity_from))
        else:
            raise InputError(f"{item}: no such file or directory")
    if not found:
        raise InputError(f"no video or image files found in {', '.join(map(str, inputs))}")
    return [Job(path, identity, SourceKey.of(path)) for path, identity in sorted(found.items())]


@dataclass
class Result:
    """What a worker sends back for one job."""

    record: ClipRecord | SkipRecord
    stage_seconds: dict[str, float]


def process_clip(job: Job, cfg: PreprocessConfig, annotator: FaceAnnotator, store: DatasetStore) -> Result:
    """Annotate one input and write its clip file; problems of the input become a SkipRecord, a
    full disk (`DiskFull`, not the input's fault) stops the run."""
    key = job.key
    before = dict(annotator.timer.seconds)

    def clip() -> ClipRecord:
        clip_id = clip_id_for(job.path)
        with MediaReader(job.path, cfg.frame_step, cfg.max_frames) as media, \
                ClipWriter(store.tmp_path(clip_id), store.root / clip_file_for(clip_id)) as writer:
            arrays, face_size = _annotate(job.path, media, cfg, annotator, writer)
            writer.commit(arrays)
        info = media.info
        return ClipRecord(clip_id, job.identity, key.source, key.size, key.mtime_ns, clip_file_for(clip_id),
                          writer.num_frames, info.fps, info.width, info.height, face_size)

    record = record_or_skip(key, clip)
    stages = {k: v - before.get(k, 0.0) for k, v in annotator.timer.seconds.items()}
    return Result(record, stages)


def record_or_skip(key: SourceKey, clip: Callable[[], ClipRecord]) -> ClipRecord | SkipRecord:
    """`clip()` (annotate an input, write its clip file), or the SkipRecord of an input that cannot
    be used: its `SkipInput`, or any error a library raises on a strange file (one line). A full
    disk (`DiskFull`) is not the input's fault: it stops the run."""
    try:
        return clip()
    except SkipInput as e:
        return SkipRecord(key.source, key.size, key.mtime_ns, e.reason)
    except DiskFull:
        raise
    except Exception as e:  # a library failing on a strange file must not stop the run
        return SkipRecord(key.source, key.size, key.mtime_ns, f"unexpected {type(e).__name__}: {e}".splitlines()[0])


def _annotate(path: Path, media: MediaReader, cfg: PreprocessConfig, annotator: FaceAnnotator,
              writer: ClipWriter) -> tuple[ClipArrays, float]:
    """Frames -> writer; returns the per-frame arrays and the median face size, or raises SkipInput."""
    timer, frames = annotator.timer, media.frames()
    annotator.reset()
    kp_px, kp, boxes, index, face_sizes = [], [], [], [], []
    decoded = 0
    while True:
        with timer("decode"):
            item = next(frames, None)
        if item is None:
            break
        decoded += 1
        i, t, frame = item
        ann = annotator(frame, t)
        if ann is None:
            continue
        with timer("encode"):
            jpeg = cv2.imencode(".jpg", ann.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])[1]
            png = cv2.imencode(".png", np.round(ann.mask * 255).astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1]
            writer.add_frame(jpeg.tobytes(), png.tobytes())
        kp_px.append(ann.keypoints_px)
        kp.append(ann.keypoints)
        boxes.append(ann.crop_box.as_array())
        index.append(i)
        face_sizes.append(ann.face.size)

    if not index:
        raise SkipInput(path, f"no face found in {decoded} frame{'s' * (decoded != 1)}")
    median = float(np.median(face_sizes))
    if median < cfg.min_face_size:
        raise SkipInput(path, f"face too small ({median:.0f} px < min_face_size {cfg.min_face_size:g} px)")
    if len(index) < cfg.min_frames:
        raise SkipInput(path, f"only {len(index)} frames with a face (min_frames {cfg.min_frames})")
    arrays = ClipArrays(np.stack(kp_px), np.stack(kp), np.stack(boxes), np.array(index, np.int32))
    return arrays, round(median, 2)


# --- running many inputs ------------------------------------------------------------------------

_worker: tuple[PreprocessConfig, FaceAnnotator, DatasetStore] | None = None


def _init_worker(cfg: PreprocessConfig, root: str) -> None:
    """Build the models once per worker process."""
    global _worker
    cv2.setNumThreads(1)  # one process per core
    _worker = (cfg, FaceAnnotator(cfg.annotator, profile=cfg.profile), DatasetStore(root))


def _run_job(job: Job) -> Result:
    cfg, annotator, store = _worker
    return process_clip(job, cfg, annotator, store)


@dataclass
class Summary:
    clips_ok: int = 0  # inputs of this run that have data (done now or by an earlier run)
    frames: int = 0  # frames of those clips
    new_clips: int = 0
    new_frames: int = 0
    skipped: list[SkipRecord] = field(default_factory=list)  # inputs of this run without data
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # summed over the new clips

    def report(self) -> dict:
        """The --report-json object."""
        return {
            "clips_ok": self.clips_ok,
            "frames": self.frames,
            "skipped": [{"path": s.source, "reason": s.reason} for s in self.skipped],
        }


def run_preprocess(inputs: list[str | Path], out: str | Path, cfg: PreprocessConfig = PreprocessConfig(),
                   workers: int = 1, progress: bool = True, retry_skipped: bool = False) -> Summary:
    """Process every input not already in the dataset at `out` (resumable, see bilayer.data.store).
    Inputs skipped by an earlier run are reported again as they were, or redone with
    `retry_skipped` (after a detector upgrade, say); the newest skip line of an input counts."""
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    store = DatasetStore(out)
    jobs = expand_inputs(inputs, cfg.identity_from)

    def here() -> Callable[[Job], Result]:
        annotator = FaceAnnotator(cfg.annotator, profile=cfg.profile)
        return lambda job: process_clip(job, cfg, annotator, store)

    # MediaPipe graphs are per process: each worker builds its annotator once (_init_worker).
    results = lambda todo: parallel_results(  # noqa: E731
        todo, workers, here, _run_job, _init_worker, (cfg, str(store.root)))
    return run_jobs(jobs, store, to_dict(cfg), results, retry_skipped, progress, "clip")


class Keyed(Protocol):
    key: SourceKey  # the input version a job annotates


J = TypeVar("J", bound=Keyed)


def run_jobs(jobs: list[J], store: DatasetStore, settings: dict, results: Callable[[list[J]], Iterator[Result]],
             retry_skipped: bool, progress: bool, unit: str) -> Summary:
    """The resumable run of every importer: lock the dataset folder (a second writer gets a
    one-line error naming this process), record `settings` (or refuse other ones), run the jobs
    whose input version has neither a clip nor a skip line (or a skip line, with
    `retry_skipped`), append each result to the manifest or skip report as it comes, and sum up
    all `jobs` (done now or by an earlier run). Worker processes write clip files only."""
    from tqdm import tqdm

    with FolderLock(store.root):  # one writer per dataset folder, for the whole run
        store.prepare()
        store.check_settings(settings)
        done = {r.key: r for r in store.clips()}
        skips = store.skipped()
        todo = [j for j in jobs if j.key not in done and (retry_skipped or j.key not in skips)]

        summary, start = Summary(), time.perf_counter()
        bar = tqdm(total=len(todo), unit=unit, disable=not progress or not todo, dynamic_ncols=True)
        for result in results(todo):
            record = result.record
            if isinstance(record, ClipRecord):
                store.add_clip(record)
                done[record.key] = record
                summary.new_clips += 1
                summary.new_frames += record.num_frames
            else:
                store.add_skip(record)
                skips[record.key] = record
            for k, v in result.stage_seconds.items():
                summary.stage_seconds[k] = summary.stage_seconds.get(k, 0.0) + v
            bar.set_postfix_str(f"{summary.new_frames / (time.perf_counter() - start):.1f} frames/s, "
                                f"{bar.n + 1 - summary.new_clips} skipped")
            bar.update()
        bar.close()

    summary.seconds = time.perf_counter() - start
    for job in jobs:
        if job.key in done:
            summary.clips_ok += 1
            summary.frames += done[job.key].num_frames
        else:
            summary.skipped.append(skips[job.key])
    return summary


def parallel_results(todo: list[J], workers: int, here: Callable[[], Callable[[J], Result]],
                     in_worker: Callable[[J], Result], initializer: Callable[..., None] | None = None,
                     initargs: tuple = ()) -> Iterator[Result]:
    """Results in completion order: in this process (`here()` builds the per-job function once)
    or in a pool of `workers` processes (`initializer(*initargs)` once per worker, then
    `in_worker(job)`, a module-level function)."""
    if not todo:
        return
    if workers == 1 or len(todo) == 1:
        run = here()
        yield from (run(job) for job in todo)
        return
    # spawn, not fork: the parent may hold threads (tqdm, torch) and native libraries' state.
    # Unlike multiprocessing.Pool, the executor fails loudly (BrokenProcessPool) if a worker dies.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(todo)), ctx, initializer, initargs)
    try:
        futures = [pool.submit(in_worker, job) for job in todo]
        for future in as_completed(futures):
            yield future.result()
    finally:  # on Ctrl-C or an error, drop the queued jobs instead of finishing them
        pool.shutdown(cancel_futures=True)
