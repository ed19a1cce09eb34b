"""`bilayer preprocess` end to end on real media: layout, bad inputs, kill -9 + resume, workers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from bilayer.cli.main import main
from bilayer.data.samples import load_photo, speech_like_audio
from bilayer.data.store import ClipReader, DatasetStore, SourceKey

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted((root / "shards").rglob("*.zip"))}


def test_layout_of_a_preprocessed_dataset(dataset_dir, media_dir):
    clips = {c.identity + "/" + Path(c.source).name: c for c in DatasetStore(dataset_dir).clips()}
    assert set(clips) == {"alice/interview.mp4", "bob/talk.mkv", "bob/portrait.png"}
    assert clips["alice/interview.mp4"].num_frames == 50 and clips["alice/interview.mp4"].fps == 25
    assert clips["bob/portrait.png"].num_frames == 1
    for clip in clips.values():
        assert clip.file.startswith("shards/") and (dataset_dir / clip.file).exists()
        with ClipReader(dataset_dir / clip.file) as reader:
            t = clip.num_frames
            kp_px, kp = reader.array("keypoints_px"), reader.array("keypoints")
            assert kp_px.shape == kp.shape == (t, 68, 2) and kp.dtype == np.float32
            np.testing.assert_allclose(kp, (kp_px + 0.5) / 256 * 2 - 1, atol=1e-6)
            assert reader.array("crop_boxes").shape == (t, 3)
            assert (reader.array("frame_index") == np.arange(t)).all()
            image = cv2.imdecode(np.frombuffer(reader.jpeg(t - 1), np.uint8), cv2.IMREAD_COLOR)
            mask = cv2.imdecode(np.frombuffer(reader.mask_png(t - 1), np.uint8), cv2.IMREAD_GRAYSCALE)
            assert image.shape == (256, 256, 3) and mask.shape == (256, 256)
    assert not list((dataset_dir / "tmp").iterdir())


def make_bad_inputs(folder: Path, good_video: Path) -> dict[str, str]:
    """One file per bad-input case -> the start of its expected reason."""
    folder.mkdir()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    data = good_video.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])  # the index (moov) is at the end
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 20000] = np.random.default_rng(1).bytes(20000)
    (folder / "corrupt_middle.mp4").write_bytes(bytes(corrupt))
    cv2.imwrite(str(folder / "cat.jpg"), load_photo("chelsea")[..., ::-1])
    small = cv2.resize(load_photo("grace_hopper"), None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "tiny_face.png"), small[..., ::-1])  # face ~44 px < 64
    (folder / "notes.txt").write_text("not media")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with av.open(str(folder / "speech.mp4"), "w") as out:  # audio only
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(speech_like_audio(0.5)[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return {
        "empty.mp4": "empty file (0 bytes)",
        "garbage.mp4": "cannot open video (Invalid data",
        "truncated.mp4": "cannot open video",
        "corrupt_middle.mp4": "decode error at frame",
        "cat.jpg": "no face found in 1 frame",
        "tiny_face.png": "face too small",
        "notes.txt": "unsupported file type '.txt'",
        "photo.jpg": "cannot decode image",
        "speech.mp4": "no video stream",
    }


def test_bad_inputs_are_skipped_with_reasons_and_keep_earlier_output(dataset_dir, sample_video, tmp_path, capsys):
    out = tmp_path / "dataset"
    shutil.copytree(dataset_dir, out)
    manifest_before = (out / "manifest.jsonl").read_bytes()
    files_before = tree_digest(out)
    expected = make_bad_inputs(tmp_path / "bad", sample_video)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), load_photo("grace_hopper")[..., ::-1])
    report = tmp_path / "reports" / "report.json"  # a missing folder is created

    code = main(["preprocess", str(tmp_path / "bad"), str(tmp_path / "bad" / "notes.txt"), str(good),
                 "--out", str(out), "--report-json", str(report), "--quiet"])
    assert code == 3
    result = json.loads(report.read_text())
    assert result["clips_ok"] == 1 and result["frames"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == set(expected)
    for name, start in expected.items():
        assert reasons[name].startswith(start), (name, reasons[name])
        assert "\n" not in reasons[name] and str(tmp_path) not in reasons[name]
    printed = capsys.readouterr().out
    assert "1 clips ok" in printed and f"{len(expected)} skipped" in printed
    # earlier output intact: old manifest lines kept byte for byte, old clip files untouched
    assert (out / "manifest.jsonl").read_bytes().startswith(manifest_before)
    assert {k: v for k, v in tree_digest(out).items() if k in files_before} == files_before
    skipped_lines = (out / "skipped.jsonl").read_text().splitlines()
    assert len(skipped_lines) == len(expected)

    # a re-run does no work again and reports the same skips
    first_report = report.stat().st_ino
    code = main(["preprocess", str(tmp_path / "bad"), str(tmp_path / "bad" / "notes.txt"), str(good),
                 "--out", str(out), "--report-json", str(report), "--quiet"])
    assert code == 3 and json.loads(report.read_text()) == result
    assert report.stat().st_ino != first_report  # replaced atomically, not rewritten in place
    assert [p.name for p in report.parent.iterdir()] == ["report.json"]
    assert len((out / "skipped.jsonl").read_text().splitlines()) == len(expected)


def test_retry_skipped_redoes_earlier_skips(dataset_dir, sample_video, tmp_path):
    """A skip stays until asked: an input an older detector skipped (same file version) is reported
    again as it was, and processed with --retry-skipped; inputs that are still bad are skipped again."""
    out = tmp_path / "dataset"
    shutil.copytree(dataset_dir, out)
    expected = make_bad_inputs(tmp_path / "bad", sample_video)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), load_photo("grace_hopper")[..., ::-1])
    old_skip = {**asdict(SourceKey.of(good)), "reason": "no face found in 1 frame"}
    with open(out / "skipped.jsonl", "a") as f:
        f.write(json.dumps(old_skip) + "\n")
    args = ["preprocess", str(tmp_path / "bad"), str(tmp_path / "bad" / "notes.txt"), str(good),
            "--out", str(out), "--quiet"]
    assert main([*args, "--report-json", str(tmp_path / "first.json")]) == 3
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["clips_ok"] == 0 and {"path": str(good.absolute()), "reason": old_skip["reason"]} in first["skipped"]

    assert main([*args, "--report-json", str(tmp_path / "retry.json"), "--retry-skipped"]) == 3
    retry = json.loads((tmp_path / "retry.json").read_text())
    assert retry["clips_ok"] == 1 and retry["frames"] == 1
    assert {Path(s["path"]).name for s in retry["skipped"]} == set(expected)
    skip_lines = (out / "skipped.jsonl").read_text().splitlines()
    assert len(skip_lines) == 1 + 2 * len(expected)  # the old line, then every bad input twice


def test_a_dataset_keeps_the_settings_it_was_made_with(dataset_dir, tmp_path, capsys):
    """A re-run with other settings would mix crops of two kinds in one dataset: refused, with the
    differences named; the same settings resume as before."""
    out = tmp_path / "dataset"
    shutil.copytree(dataset_dir, out)
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["annotator"]["image_size"] == 256 and recorded["max_frames"] is None
    portrait = str(Path(DatasetStore(out).clips()[0].source))
    manifest = (out / "manifest.jsonl").read_bytes()

    argv = ["preprocess", portrait, "--out", str(out), "--quiet"]
    assert main([*argv, "--set", "annotator.image_size=128", "--set", "max_frames=10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "made with other settings" in err, err
    assert "annotator.image_size: 256 -> 128" in err and "max_frames: None -> 10" in err
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert main(argv) == 0 and "0 new, 1 done earlier" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["preprocess", "/nonexistent/video.mp4", "--out", "OUT"],
    ["preprocess", "INPUT"],  # no --out
    ["preprocess", "INPUT", "--out", "OUT", "--set", "annotator.no_such_key=1"],
    ["preprocess", "INPUT", "--out", "OUT", "--workers", "0"],
])
def test_usage_errors_exit_2(argv, media_dir, tmp_path):
    argv = [a.replace("INPUT", str(media_dir / "bob" / "portrait.png")).replace("OUT", str(tmp_path / "o")) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


@pytest.mark.parametrize("option", ["--out", "--report-json"])
def test_an_output_blocked_by_a_file_is_one_line_before_any_work(option, media_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    out = {"--out": blocker, "--report-json": blocker / "r.json"}[option]
    argv = ["preprocess", str(media_dir / "bob" / "portrait.png"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*argv, option, str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{blocker}: not a folder" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_manifest(dataset_dir, media_dir, tmp_path):
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "bilayer", "preprocess", str(media_dir), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while not (manifest.exists() and manifest.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "preprocess ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = manifest.read_text().count("\n")
    assert 1 <= done_before < 3, "the run was not interrupted"

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"3 clips ok ({3 - done_before} new, {done_before} done earlier)" in resumed.stdout
    assert DatasetStore(out).clips() == DatasetStore(dataset_dir).clips()
    assert tree_digest(out) == tree_digest(dataset_dir)
    assert not list((out / "tmp").iterdir())


def test_two_workers_fill_the_same_dataset(dataset_dir, media_dir, tmp_path):
    from bilayer.data.preprocess.pipeline import run_preprocess

    summary = run_preprocess([media_dir], tmp_path / "parallel", workers=2, progress=False)
    assert summary.clips_ok == 3 and summary.frames == 101 and not summary.skipped
    assert DatasetStore(tmp_path / "parallel").clips() == DatasetStore(dataset_dir).clips()
    assert tree_digest(tmp_path / "parallel") == tree_digest(dataset_dir)
