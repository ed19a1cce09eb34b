"""The demo model's video set: synthetic clips of every registry photo, split by identity.

Layout under OUT (identity folders, as `bilayer preprocess` expects with identity_from=folder):

    train/<identity>/<photo>_<k>.mp4     training identities (37 people, 45 photos)
    heldout/<identity>/<photo>_<k>.mp4   identities never seen in training (HELDOUT_IDENTITIES)
    driving/<photo>_drive.mp4            a longer held-out clip to drive the demo
    clips.json                           every file with its identity, photo, split and seed

The split is by identity, as in the paper (Sec. 4: the test set shares no videos or identities
with the training set); docs/demo_data.md gives the reasons for this one.
"""
from __future__ import annotations

import multiprocessing
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from bilayer.config import check_recorded_settings
from bilayer.data.synthetic.photos import Photo, sample_photos
from bilayer.io.files import write_json

HELDOUT_IDENTITIES = ("audrey", "biden", "connery", "grace_hopper")  # two men, two women, three archives
DRIVING_PHOTOS = ("biden", "grace_hopper")  # the first one available drives the demo


@dataclass(frozen=True)
class ClipSpec:
    file: str  # relative to the output folder
    identity: str
    photo: str
    split: str  # "train", "heldout" or "driving"
    seed: int
    seconds: float


@dataclass(frozen=True)
class _Job:
    spec: ClipSpec
    photo_path: str
    fps: int
    size: int


def _seed(photo: str, index: int, base: int) -> int:
    """Stable per (photo, clip index): adding or losing other photos changes no clip."""
    return (zlib.crc32(f"{photo}/{index}".encode()) + base) % 2**31


def plan_clips(photos: list[Photo], clips_per_photo: int, seconds: float, drive_seconds: float,
               seed: int = 0) -> list[ClipSpec]:
    specs = []
    for photo in photos:
        split = "heldout" if photo.identity in HELDOUT_IDENTITIES else "train"
        for k in range(clips_per_photo):
            specs.append(ClipSpec(f"{split}/{photo.identity}/{photo.name}_{k:02d}.mp4", photo.identity, photo.name,
                                  split, _seed(photo.name, k, seed), seconds))
    by_name = {p.name: p for p in photos}
    driver = next(by_name[name] for name in DRIVING_PHOTOS if name in by_name)
    specs.append(ClipSpec(f"driving/{driver.name}_drive.mp4", driver.identity, driver.name, "driving",
                          _seed(driver.name, -1, seed), drive_seconds))
    return specs


@lru_cache(maxsize=2)
def _animator(path: str, size: int):
    from bilayer.data.synthetic.animator import HeadAnimator

    return HeadAnimator.from_file(path, size)


def _make(job: _Job, out_dir: str) -> float:
    """Worker: write one clip, return the seconds it took."""
    from bilayer.data.synthetic.clips import make_clip

    start = time.perf_counter()
    s = job.spec
    make_clip(_animator(job.photo_path, job.size), Path(out_dir) / s.file, s.seconds, job.fps, s.seed)
    return time.perf_counter() - start


def make_demo_set(out_dir: str | Path, cache_dir: str | Path | None, clips_per_photo: int = 6,
                  seconds: float = 4.0, fps: int = 25, size: int = 384, drive_seconds: float = 10.0,
                  workers: int = 2, seed: int = 0, progress: bool = True) -> dict:
    """Write the whole video set and clips.json into `out_dir`; returns the manifest.

    `cache_dir` holds the registry archives (see `sample_photos`; None: only the two photos of
    installed packages). Clips are made in `workers` processes, deterministic per `seed`. Resumable:
    clip files are written atomically, so a clip already in `out_dir` is kept (its bytes and
    modification time, so that `bilayer preprocess` does not redo it); a folder made with other
    generator settings is refused.
    """
    from bilayer.data.synthetic.clips import clip_frames
    from bilayer.io.video import video_codec

    out_dir = Path(out_dir)
    for length in (seconds, drive_seconds):  # before any download or clip
        clip_frames(length, fps)
    photos = sample_photos(cache_dir)
    specs = plan_clips(photos, clips_per_photo, seconds, drive_seconds, seed)
    manifest = {
        "generator": {"clips_per_photo": clips_per_photo, "seconds": seconds, "drive_seconds": drive_seconds,
                      "fps": fps, "size": size, "seed": seed, "codec": video_codec()},
        "splits": {"train": sorted({p.identity for p in photos} - set(HELDOUT_IDENTITIES)),
                   "heldout": sorted({p.identity for p in photos} & set(HELDOUT_IDENTITIES))},
        "photos": [{"name": p.name, "identity": p.identity, "path": str(p.path)} for p in photos],
        "clips": [asdict(s) for s in specs],
    }
    check_recorded_settings(out_dir / "clips.json", manifest["generator"], key="generator")
    write_json(out_dir / "clips.json", manifest)
    paths = {p.name: str(p.path) for p in photos}
    todo = [s for s in specs if not (out_dir / s.file).exists()]
    if progress and len(todo) < len(specs):
        print(f"{len(specs) - len(todo)} of {len(specs)} clips already made", flush=True)
    jobs = [_Job(s, paths[s.photo], fps, size) for s in todo]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), ctx) as pool:
        for done, (spec, took) in enumerate(zip(todo, pool.map(_make, jobs, [str(out_dir)] * len(jobs))), 1):
            if progress:
                print(f"[{done}/{len(todo)}] {spec.file} ({took:.1f} s)", flush=True)
    return manifest

