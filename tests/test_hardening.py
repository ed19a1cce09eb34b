"""Hardening (issue 19): a full disk, two writers of one folder, a photo with a tiny face.

A full disk is simulated by writes that fail with ENOSPC at a chosen call (and, where this
machine lets root mount one, by a real small tmpfs): every command stops with one line naming the
file, the free space and about how much is needed, skips no input, leaves no partial file, and a
re-run after freeing space ends exactly like an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch

from bilayer.checkpoint import read_checkpoint
from bilayer.cli.main import main
from bilayer.data.preprocess.geometry import MIN_FACE_SIZE
from bilayer.data.preprocess.pipeline import PreprocessConfig
from bilayer.data.samples import SAMPLE_PHOTOS, load_photo
from bilayer.data.store import DatasetStore, clip_file_for, clip_id_for
from bilayer.errors import InputError
from bilayer.io import files
from bilayer.io.lock import FolderLock
from bilayer.runtime.faces import crop_source
from bilayer.runtime.motion import motion_samples
from bilayer.training.config import load_train_config
from bilayer.training.data import open_dataset
from bilayer.training.loop import Trainer
from tests.test_data_preprocess import tree_digest
from tests.test_official_layout import build_official_tree

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"
#: A short run of both stages that saves last.pt after every iteration and logs every one.
TRAIN = ("base.iterations=2", "updater.iterations=1", "base.batch_size=2", "updater.batch_size=2",
         "standing_stats_batches=1", "checkpoint_every=1", "log_every=1", "image_every=1", "loss.face=0")
SIZE = r"(\d+(?:\.\d)?) (B|kB|MB|GB|TB)"
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_on(n: int, real: Callable, when: Callable[..., bool] = lambda *a, **k: True) -> Callable:
    """`real`, except that its `n`-th call for which `when(*args)` holds fails like a full disk."""
    calls = 0

    def fake(*args, **kwargs):
        nonlocal calls
        if when(*args, **kwargs):
            calls += 1
            if calls == n:
                raise full_disk()
        return real(*args, **kwargs)

    return fake


def error_lines(err: str) -> list[str]:
    """The error lines of a command's stderr, which holds no traceback (progress bars write there
    too, with carriage returns and maybe no newline before the error)."""
    assert "Traceback" not in err, err
    return re.findall(r"bilayer \w+: error: [^\r\n]*", err)


def disk_full_needed(err: str, command: str, path: Path) -> float:
    """Check that `err` holds one line, `bilayer COMMAND: error: PATH: disk full (X free, about Y
    needed)`, and no traceback; returns Y in bytes."""
    lines = error_lines(err)
    assert len(lines) == 1, err
    pattern = rf"bilayer {command}: error: {re.escape(str(path))}: disk full \({SIZE} free, about {SIZE} needed\)"
    match = re.fullmatch(pattern, lines[0])
    assert match, lines[0]
    return float(match[3]) * UNITS[match[4]]


def no_partial_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".partial" in p.name or p.parent.name == "tmp"]


# ------------------------------------------------------------------------------ preprocess, disk full


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two registry photos: two one-frame clips, astronaut first."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(SAMPLE_PHOTOS["astronaut"].path, folder / "astronaut.png")
    shutil.copy(SAMPLE_PHOTOS["grace_hopper"].path, folder / "grace_hopper.jpg")
    return folder


@pytest.fixture(scope="module")
def photo_dataset(photos, tmp_path_factory) -> Path:
    """`photos` preprocessed once, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["preprocess", str(photos), "--out", str(out), "--quiet"]) == 0
    return out


def _fail_clip(monkeypatch) -> None:  # the second clip's mask, after its frame went into the temp file
    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on(8, zipfile.ZipFile.writestr))


def _fail_manifest(monkeypatch) -> None:  # the second manifest line
    monkeypatch.setattr(os, "write", fail_on(2, os.write, lambda fd, data: b'"clip_id"' in data))


def _tear_manifest(monkeypatch) -> None:  # the second manifest line, half written: the disk filled up mid-line
    real = os.write
    calls = []

    def write(fd: int, data: bytes) -> int:
        if b'"clip_id"' in data:
            calls.append(1)
            if len(calls) == 2:
                return real(fd, data[: len(data) // 2])
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _fail_settings(monkeypatch) -> None:  # settings.json, the first thing a run writes

    def settings(path: Path, *args, **kwargs) -> bool:  # its temp file
        return path.name.startswith(".settings.")

    monkeypatch.setattr(Path, "write_text", fail_on(1, Path.write_text, settings))


@pytest.mark.parametrize("site, fail, recorded", [
    ("clip", _fail_clip, 1),
    ("manifest", _fail_manifest, 1),
    ("torn manifest line", _tear_manifest, 1),
    ("settings", _fail_settings, 0),
])
def test_preprocess_stops_on_a_full_disk_and_resumes_exactly(site, fail, recorded, photos, photo_dataset, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / "dataset"
    path = {"clip": out / clip_file_for(clip_id_for(photos / "grace_hopper.jpg")), "settings": out / "settings.json"}
    fail(monkeypatch)
    assert main(["preprocess", str(photos), "--out", str(out), "--quiet"]) == 2
    disk_full_needed(capsys.readouterr().err, "preprocess", path.get(site, out / "manifest.jsonl"))
    # Nothing recorded as skipped, no temp or partial file, the manifest only whole lines.
    assert not (out / "skipped.jsonl").exists()
    assert no_partial_files(out)
    assert [c.source for c in DatasetStore(out).clips()] == [str(photos / "astronaut.png")][:recorded]
    manifest = (out / "manifest.jsonl").read_bytes() if recorded else b""
    assert manifest.count(b"\n") == recorded and (not manifest or manifest.endswith(b"\n"))

    monkeypatch.undo()  # space freed
    assert main(["preprocess", str(photos), "--out", str(out), "--quiet"]) == 0
    assert f"2 clips ok ({2 - recorded} new, {recorded} done earlier)" in capsys.readouterr().out
    assert DatasetStore(out).clips() == DatasetStore(photo_dataset).clips()
    assert tree_digest(out) == tree_digest(photo_dataset)
    assert (out / "manifest.jsonl").read_text().count("\n") == 2


def test_an_official_layout_import_stops_on_a_full_disk(tmp_path, monkeypatch, capsys):
    root, out = build_official_tree(tmp_path / "official"), tmp_path / "dataset"
    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail_on(3, zipfile.ZipFile.writestr))
    assert main(["preprocess", "--official-layout", str(root), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "disk full (" in line and str(out / "shards") in line, line
    assert not (out / "skipped.jsonl").exists() and no_partial_files(out)


# -------------------------------------------------------------------------------- training, disk full


def train_args(dataset_dir: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY_YAML), "--data", str(dataset_dir), "--out", str(run), *TRAIN, *extra]


@pytest.fixture(scope="module")
def reference_run(dataset_dir, tmp_path_factory) -> Path:
    """The short run of TRAIN, uninterrupted."""
    run = tmp_path_factory.mktemp("train") / "run"
    assert main(train_args(dataset_dir, run)) == 0
    return run


def same_end(run: Path, reference: Path) -> None:
    """`run` ended where `reference` did, with the same weights and the same losses logged (the
    last line of each iteration: iterations after the last checkpoint are done, and logged, again)."""
    a, b = (read_checkpoint(r / "checkpoints" / "last.pt") for r in (run, reference))
    assert a["progress"] == b["progress"] == {"stage": "updater", "iteration": 1}
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-6, msg=k)
    logs = [map(json.loads, (x / "log.jsonl").read_text().splitlines()) for x in (run, reference)]
    losses = [{(r["stage"], r["iteration"]): r["G/total"] for r in log} for log in logs]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "base.pt", "final.pt"}


class FullFile:
    """A file whose writes fail with ENOSPC once `room` bytes are in, as on a real full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise full_disk()
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _fail_checkpoint(monkeypatch) -> None:
    """The second checkpoint write (last.pt at the end of the base stage) runs out of room after
    1 kB: torch.save reports that as a RuntimeError raised while handling the OSError."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        return real(obj, FullFile(f, 1000) if len(calls) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def _fail_log(monkeypatch) -> None:  # the log line of base iteration 2
    monkeypatch.setattr(os, "write", fail_on(2, os.write, lambda fd, data: data.startswith(b'{"stage"')))


@pytest.mark.parametrize("site, fail, file", [
    ("checkpoint", _fail_checkpoint, "checkpoints/last.pt"),
    ("log line", _fail_log, "log.jsonl"),
])
def test_training_stops_on_a_full_disk_and_resumes_exactly(site, fail, file, dataset_dir, reference_run, tmp_path,
                                                           monkeypatch, capsys):
    run = tmp_path / "run"
    fail(monkeypatch)
    assert main(train_args(dataset_dir, run)) == 2
    needed = disk_full_needed(capsys.readouterr().err, "train", run / file)
    if site == "checkpoint":  # about a checkpoint's size
        size = (reference_run / "checkpoints" / "last.pt").stat().st_size
        assert 0.5 * size < needed < 2 * size, (needed, size)
    # The last checkpoint is the one before the failure, intact; no partial file; whole log lines.
    assert read_checkpoint(run / "checkpoints" / "last.pt")["progress"] == {"stage": "base", "iteration": 1}
    assert no_partial_files(run) and not (run / "checkpoints" / "base.pt").exists()
    log = (run / "log.jsonl").read_text()
    assert log.endswith("\n")
    assert [json.loads(line)["iteration"] for line in log.splitlines()] == [1, 2][:log.count("\n")]

    monkeypatch.undo()  # space freed
    assert main(train_args(dataset_dir, run, "--resume")) == 0
    same_end(run, reference_run)


def test_tensorboard_writes_check_for_room_first(dataset_dir, tmp_path, monkeypatch, capsys):
    """TensorBoard writes its events from a thread that prints a traceback when a write fails: a
    disk without room stops the run before TensorBoard sees it."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage._replace(free=0))
    run = tmp_path / "run"
    assert main(train_args(dataset_dir, run)) == 2
    assert disk_full_needed(capsys.readouterr().err, "train", run / "tb") == pytest.approx(files.MIN_NEEDED, rel=0.01)
    assert not (run / "checkpoints").exists()


# ------------------------------------------------------------------------------- a real small disk


@pytest.fixture
def small_disk(tmp_path) -> Callable[[str], Path]:
    """A tmpfs of a given size (and resized by calling again); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(size: str) -> Path:
        options = f"{'remount,' if os.path.ismount(disk) else ''}size={size}"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        return disk

    yield mount
    if os.path.ismount(disk):
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.mark.slow
def test_preprocess_with_two_workers_on_a_real_full_disk(small_disk, photos, photo_dataset, capsys):
    """A 24 kB disk holds the settings, not a clip (30-45 kB): the worker that runs out of room
    stops the run (one line), and after the disk grows the run ends as an uninterrupted one."""
    out = small_disk("24k") / "dataset"
    args = ["preprocess", str(photos), "--out", str(out), "--quiet", "--workers", "2"]
    assert main(args) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert re.fullmatch(rf"bilayer preprocess: error: {re.escape(str(out / 'shards'))}/\S+\.zip: disk full "
                        rf"\({SIZE} free, about {SIZE} needed\)", line), line
    assert not (out / "skipped.jsonl").exists() and no_partial_files(out)
    small_disk("8m")
    assert main(args) == 0
    assert DatasetStore(out).clips() == DatasetStore(photo_dataset).clips()
    assert tree_digest(out) == tree_digest(photo_dataset)


@pytest.mark.slow
def test_training_on_a_real_full_disk(small_disk, dataset_dir, reference_run, capsys):
    """A 1 MB disk holds the logs, not a checkpoint (about 5 MB)."""
    run = small_disk("1m") / "run"
    assert main(train_args(dataset_dir, run)) == 2
    needed = disk_full_needed(capsys.readouterr().err, "train", run / "checkpoints" / "last.pt")
    assert needed > 1e6
    assert no_partial_files(run) and not list((run / "checkpoints").iterdir())
    small_disk("64m")
    assert main(train_args(dataset_dir, run)) == 0  # no checkpoint was written: a new run
    same_end(run, reference_run)


# -------------------------------------------------------------------------------------- two writers


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.05)


def holds_lock(folder: Path, pid: int) -> Callable[[], bool]:
    lock = folder / ".lock"
    return lambda: lock.is_file() and lock.read_text().strip() == str(pid)


def in_use(folder: Path, pid: int) -> str:
    return f"{folder}: in use by another bilayer process (pid {pid}); wait for it to finish or stop it"


def test_a_second_preprocess_is_refused_and_a_killed_one_blocks_nothing(media_dir, photos, tmp_path, capsys):
    out = tmp_path / "dataset"
    cmd = [sys.executable, "-m", "bilayer", "preprocess", str(media_dir), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(holds_lock(out, proc.pid), proc, "lock")
        assert main(["preprocess", str(photos), "--out", str(out), "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == f"bilayer preprocess: error: {in_use(out, proc.pid)}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # left behind by kill -9
    assert main(["preprocess", str(photos), "--out", str(out), "--quiet"]) == 0
    sources = [c.source for c in DatasetStore(out).clips()]
    assert {str(photos / "astronaut.png"), str(photos / "grace_hopper.jpg")} <= set(sources)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["source"] for line in lines})  # each clip once


def test_a_second_training_into_a_locked_run_folder_is_refused(dataset_dir, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    with FolderLock(run):
        assert main(train_args(dataset_dir, run)) == 2
        assert error_lines(capsys.readouterr().err) == [f"bilayer train: error: {in_use(run, os.getpid())}"]
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    cfg = load_train_config(TINY_YAML, list(TRAIN))
    data = open_dataset(dataset_dir, cfg)
    last = reference_run / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns
    with FolderLock(reference_run), pytest.raises(InputError, match=re.escape(in_use(reference_run, os.getpid()))):
        Trainer(cfg, data, reference_run, resume=True)
    assert last.stat().st_mtime_ns == before
    trainer = Trainer(cfg, data, run)  # the folder is free again; the trainer holds it until its run ends
    with pytest.raises(InputError, match="in use"):
        FolderLock(run).acquire()
    trainer.run(stop_after=1)
    FolderLock(run).acquire().release()


def test_a_killed_training_blocks_nothing_even_while_its_loader_workers_live(dataset_dir, tmp_path, capsys):
    """`kill -9` of the trainer alone: its forked loader workers, which outlive it for a while,
    do not keep the run folder locked."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "bilayer", "train", "--config", str(TINY_YAML), "--data", str(dataset_dir),
           "--out", str(run), "base.iterations=100000", "num_workers=1", "log_every=1", "loss.face=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (run / "log.jsonl").is_file(), proc, "log line")
        assert holds_lock(run, proc.pid)()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        FolderLock(run).acquire().release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert main(train_args(dataset_dir, run, "--stop-after", "1")) == 0  # no checkpoint yet: a new run


# ------------------------------------------------------------------------------------ tiny faces


def test_photos_with_a_face_below_the_minimum_are_refused(tmp_path, tiny_checkpoint, capsys):
    assert PreprocessConfig().min_face_size == MIN_FACE_SIZE == 64  # one minimum for data and avatars
    photo, (_, _, size) = load_photo("astronaut"), SAMPLE_PHOTOS["astronaut"].face
    small = tmp_path / "small_face.png"
    scaled = cv2.resize(photo, None, fx=40 / size, fy=40 / size, interpolation=cv2.INTER_AREA)  # a ~40 px face
    cv2.imwrite(str(small), scaled[..., ::-1])
    with pytest.raises(InputError) as error:
        crop_source(small, 64)
    match = re.fullmatch(rf"{re.escape(str(small))}: face too small \((\d+) px, at least 64 px\)", str(error.value))
    assert match and 30 < int(match[1]) < MIN_FACE_SIZE, error.value

    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), cv2.resize(photo, (16, 16), interpolation=cv2.INTER_AREA)[..., ::-1])
    track, out = tmp_path / "track.npy", tmp_path / "out.mp4"
    np.save(track, motion_samples(np.zeros((68, 2), np.float32) + 0.1, 2))
    for source in (small, tiny):
        code = main(["animate", "--source", str(source), "--keypoints", str(track),
                     "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert re.fullmatch(rf"bilayer animate: error: {re.escape(str(source))}: "
                            rf"(no face found|face too small \(\d+ px, at least 64 px\))", err), err
        assert not out.exists()
