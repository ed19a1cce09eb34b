"""`bilayer preprocess --official-layout`: data prepared for the authors' code -> our dataset store.

The tree is built from real photos (registry-shipped portraits) cropped and saved at 256 and 320 px,
with (68, 3) keypoint files and PNG segs, in DATA_ROOT/[imgs, keypoints, segs]/[train, test]/...
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bilayer.cli.main import main
from bilayer.config import to_dict
from bilayer.data.config import DatasetConfig
from bilayer.data.dataset import PairDataset, identity_split
from bilayer.data.landmarks import draw_official_landmarks, flip_keypoints, pixel_keypoints
from bilayer.data.preprocess.official_layout import run_official_import
from bilayer.data.samples import SAMPLE_PHOTOS, load_photo
from bilayer.data.store import ClipReader, ClipRecord, ClipWriter, DatasetStore
from bilayer.errors import InputError
from tests.test_data_landmarks import face_keypoints

GOOD = ("train/id00001/vidA/00001", "train/id00001/vidA/00002", "test/id00002/vidB/00001")
NO_USABLE_FRAME = "train/id00003/vidC/00001"  # a non-square image, bad keypoints, a frame missing its seg
NO_SEGS = "train/id00004/vidD/00001"


def _crop(photo: str, side: int, shift: int) -> np.ndarray:
    """A VoxCeleb-like square crop of a sample photo's face, `side` px, moved by `shift` px."""
    cx, cy, size = SAMPLE_PHOTOS[photo].face
    half = 1.1 * size
    x0, y0 = int(cx - half) + shift, int(cy - 0.2 * size - half) + shift
    image = load_photo(photo)[y0:y0 + int(2 * half), x0:x0 + int(2 * half)]
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def _write_frame(root: Path, rel: str, name: str, photo: str, side: int, shift: int, parts=("imgs", "keypoints", "segs"),
                 height: int | None = None) -> None:
    """One frame: JPEG crop, (68, 3) float pixel keypoints (x, y, z) and an elliptic face seg."""
    for kind in parts:
        (root / kind / rel).mkdir(parents=True, exist_ok=True)
    if "imgs" in parts:
        image = _crop(photo, side, shift)[:height]
        Image.fromarray(image).save(root / "imgs" / rel / f"{name}.jpg", quality=95)
    if "keypoints" in parts:
        xy = face_keypoints(side) + shift * 0.7
        np.save(root / "keypoints" / rel / f"{name}.npy", np.concatenate([xy, np.full((68, 1), 0.5)], 1))
    if "segs" in parts:
        seg = np.zeros((side, side), np.uint8)
        cv2.ellipse(seg, (side // 2, side // 2 + shift), (side // 3, side // 2), 0, 0, 360, 255, -1)
        Image.fromarray(seg).save(root / "segs" / rel / f"{name}.png")


def build_official_tree(root: Path) -> Path:
    """Three good sequences (two people in train, one in test), two without any usable frame."""
    for i in range(4):  # 256 px: the JPEGs are kept as they are; a fifth frame has no seg
        _write_frame(root, GOOD[0], f"{i:05d}", "astronaut", 256, i)
    _write_frame(root, GOOD[0], "00004", "astronaut", 256, 4, parts=("imgs", "keypoints"))
    for i in range(4):  # 320 px: resized; frame 1 is a corrupt JPEG, frame 2 has 10 keypoints
        _write_frame(root, GOOD[1], f"{i:05d}", "astronaut", 320, 2 * i)
    (root / "imgs" / GOOD[1] / "00001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    np.save(root / "keypoints" / GOOD[1] / "00002.npy", np.zeros((10, 2)))
    for name in ("9", "10", "100"):  # numeric names in numeric order; (68, 3) keypoints
        _write_frame(root, GOOD[2], name, "grace_hopper", 320, int(name) % 7)
    _write_frame(root, NO_USABLE_FRAME, "00000", "grace_hopper", 256, 0, height=200)
    _write_frame(root, NO_USABLE_FRAME, "00001", "grace_hopper", 256, 1)
    np.save(root / "keypoints" / NO_USABLE_FRAME / "00001.npy", np.zeros((68,)))
    _write_frame(root, NO_USABLE_FRAME, "00002", "grace_hopper", 256, 2, parts=("imgs", "keypoints"))
    _write_frame(root, NO_SEGS, "00000", "grace_hopper", 256, 0, parts=("imgs", "keypoints"))
    return root


@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> Path:
    return build_official_tree(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def imported(official_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    summary = run_official_import(official_root, out, progress=False)
    assert summary.clips_ok == 3 and summary.new_clips == 3 and len(summary.skipped) == 2, summary
    return out


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted((root / "shards").rglob("*.zip"))}


def _clip(root: Path, rel: str) -> ClipRecord:
    person = rel.split("/")[1]
    return next(c for c in DatasetStore(root).clips() if c.source.endswith(rel) and c.identity == person)


def test_manifest_keeps_people_splits_and_usable_frames(imported, official_root):
    clips = {c.source: c for c in DatasetStore(imported).clips()}
    assert set(clips) == {str(official_root / "imgs" / rel) for rel in GOOD}
    a, b, c = (_clip(imported, rel) for rel in GOOD)
    assert (a.identity, a.split, a.num_frames, a.source_width, a.fps) == ("id00001", "train", 4, 256, 25.0)
    assert (b.identity, b.split, b.num_frames, b.source_width) == ("id00001", "train", 2, 320)
    assert (c.identity, c.split, c.num_frames, c.source_width) == ("id00002", "test", 3, 320)
    assert a.clip_id.startswith("id00001_vidA_00001-") and len({x.clip_id for x in clips.values()}) == 3
    assert 0.5 * 256 < a.face_size < 256  # the generic face spans ~60% of the crop
    settings = json.loads((imported / "settings.json").read_text())
    assert settings == {"image_size": 256, "fps": 25.0, "jpeg_quality": 95, "profile": "official"}
    assert DatasetStore(imported).profile() == "official"
    with ClipReader(imported / b.file) as reader:
        np.testing.assert_array_equal(reader.array("frame_index"), [0, 3])  # 1: corrupt JPEG, 2: 10 keypoints
    with ClipReader(imported / c.file) as reader:
        np.testing.assert_array_equal(reader.array("frame_index"), [9, 10, 100])


def test_skipped_sequences_have_one_line_reasons(imported, official_root):
    reasons = {Path(s.source).relative_to(official_root / "imgs").as_posix(): s.reason
               for s in DatasetStore(imported).skipped().values()}
    assert set(reasons) == {NO_USABLE_FRAME, NO_SEGS}
    assert reasons[NO_SEGS] == f"no .png files in {official_root / 'segs' / NO_SEGS}"
    assert reasons[NO_USABLE_FRAME] == "no usable frame among 3 (00000: image is 256x200, not square; 2 more)"
    assert all("\n" not in r for r in reasons.values())


@pytest.mark.parametrize("rel, side", [(GOOD[0], 256), (GOOD[1], 320), (GOOD[2], 320)])
def test_frames_are_made_as_the_official_loader_makes_them(imported, official_root, rel, side):
    """Image and seg: PIL bicubic resize to 256; keypoints (x / s - 0.5) * 2 in float32."""
    clip = _clip(imported, rel)
    with ClipReader(imported / clip.file) as reader:
        index = reader.array("frame_index")
        names = [f"{i:05d}" for i in index] if rel != GOOD[2] else [str(i) for i in index]
        kp, kp_px, boxes = reader.array("keypoints"), reader.array("keypoints_px"), reader.array("crop_boxes")
        assert kp.dtype == kp_px.dtype == np.float32 and kp.shape == (len(names), 68, 2)
        np.testing.assert_array_equal(boxes, np.tile([0, 0, side], (len(names), 1)))
        np.testing.assert_array_equal(kp_px, pixel_keypoints(kp, 256))
        for t, name in enumerate(names):
            raw = np.load(official_root / "keypoints" / rel / f"{name}.npy").astype(np.float32)[:68, :2]
            np.testing.assert_array_equal(kp[t], raw / side * 2 - 1)
            np.testing.assert_array_equal(kp[t], (torch.from_numpy(raw / side) - 0.5).mul(2).numpy())  # theirs

            jpg = official_root / "imgs" / rel / f"{name}.jpg"
            if side == 256:  # a 256 px RGB JPEG is kept as it is
                assert reader.jpeg(t) == jpg.read_bytes()
            else:
                expected = np.asarray(Image.open(jpg).resize((256, 256), Image.BICUBIC), np.float32)
                decoded = np.asarray(Image.open(io.BytesIO(reader.jpeg(t))), np.float32)
                psnr = 10 * np.log10(255**2 / np.mean((decoded - expected) ** 2))
                assert psnr > 36  # JPEG at quality 95 of these crops: 39-42 dB

            seg = Image.open(official_root / "segs" / rel / f"{name}.png").resize((256, 256), Image.BICUBIC)
            mask = cv2.imdecode(np.frombuffer(reader.mask_png(t), np.uint8), cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint8 and mask.shape == (256, 256)
            np.testing.assert_array_equal(mask, np.asarray(seg))


def test_rerun_adds_nothing_and_redoes_a_changed_sequence(imported, official_root, tmp_path):
    out = tmp_path / "dataset"
    shutil.copytree(imported, out)
    manifest, skipped = (out / "manifest.jsonl").read_bytes(), (out / "skipped.jsonl").read_bytes()
    again = run_official_import(official_root, out, progress=False)
    assert (again.clips_ok, again.new_clips, len(again.skipped), again.frames) == (3, 0, 2, 9)
    assert (out / "manifest.jsonl").read_bytes() == manifest and (out / "skipped.jsonl").read_bytes() == skipped

    root = tmp_path / "official"
    shutil.copytree(official_root, root)
    first = run_official_import(root, tmp_path / "moved", progress=False)
    _write_frame(root, GOOD[2], "101", "grace_hopper", 320, 3)  # a new frame in one sequence
    changed = run_official_import(root, tmp_path / "moved", progress=False)
    assert (first.new_clips, changed.new_clips, changed.clips_ok, changed.frames) == (3, 1, 3, 10)
    assert len(DatasetStore(tmp_path / "moved").clips()) == 3  # the newest line of the sequence counts


def test_an_interrupted_import_loses_only_the_clip_in_progress(imported, official_root, tmp_path, monkeypatch):
    out = tmp_path / "dataset"
    add_frame, calls = ClipWriter.add_frame, []

    def add_frame_then_die(self, jpeg, png):
        calls.append(1)
        if len(calls) == 6:  # in the second sequence
            raise KeyboardInterrupt
        add_frame(self, jpeg, png)

    monkeypatch.setattr(ClipWriter, "add_frame", add_frame_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_official_import(official_root, out, progress=False)
    clips = DatasetStore(out).clips()
    assert [c.source for c in clips] == [str(official_root / "imgs" / GOOD[2])]  # test/ comes first
    assert not list((out / "tmp").iterdir())
    assert set(tree_digest(out)) == {c.file for c in clips}

    monkeypatch.setattr(ClipWriter, "add_frame", add_frame)
    resumed = run_official_import(official_root, out, progress=False)
    assert (resumed.clips_ok, resumed.new_clips) == (3, 2)
    assert DatasetStore(out).clips() == DatasetStore(imported).clips()
    assert tree_digest(out) == tree_digest(imported)


def test_two_workers_import_the_same_dataset(imported, official_root, tmp_path):
    summary = run_official_import(official_root, tmp_path / "parallel", workers=2, progress=False)
    assert (summary.clips_ok, summary.frames, len(summary.skipped)) == (3, 9, 2)
    assert DatasetStore(tmp_path / "parallel").clips() == DatasetStore(imported).clips()
    assert tree_digest(tmp_path / "parallel") == tree_digest(imported)


def test_cli_imports_with_exit_codes_and_report(official_root, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "report.json"
    argv = ["preprocess", "--official-layout", str(official_root), "--out", str(out), "--quiet"]
    assert main([*argv, "--report-json", str(report), "--set", "fps=30"]) == 3
    printed = capsys.readouterr().out
    assert "preprocess: 3 clips ok (3 new, 0 done earlier), 9 frames, 2 skipped" in printed
    assert json.loads(report.read_text())["clips_ok"] == 3
    assert {c.fps for c in DatasetStore(out).clips()} == {30.0}

    good = tmp_path / "good"
    for kind in ("imgs", "keypoints", "segs"):
        shutil.copytree(official_root / kind / "test", good / kind / "test")
    assert main(["preprocess", "--official-layout", str(good), "--out", str(tmp_path / "good_out"), "--quiet"]) == 0


@pytest.mark.parametrize("case, message", [
    ("missing", "{root}: no such folder"),
    ("no_imgs", "{root}: no imgs/ folder"),
    ("inputs", "give no INPUT paths with it"),
    ("nothing", "no INPUT given"),
    ("bad_key", "unknown key 'max_frames'"),
])
def test_cli_usage_errors_are_one_line(case, message, official_root, tmp_path, capsys):
    root = {"missing": tmp_path / "nope", "no_imgs": tmp_path / "empty"}.get(case, official_root)
    (tmp_path / "empty" / "keypoints").mkdir(parents=True)
    out = tmp_path / "out"
    argv = {
        "inputs": ["preprocess", str(SAMPLE_PHOTOS["astronaut"].path), "--official-layout", str(root)],
        "nothing": ["preprocess"],
        "bad_key": ["preprocess", "--official-layout", str(root), "--set", "max_frames=3"],
    }.get(case, ["preprocess", "--official-layout", str(root)])
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(root=root) in err, err
    assert not out.exists()


def test_video_and_official_data_never_mix(official_root, tmp_path, capsys):
    from bilayer.data.preprocess.pipeline import PreprocessConfig, run_preprocess

    videos = DatasetStore(tmp_path / "videos")  # settings as `bilayer preprocess` records them
    videos.prepare()
    videos.check_settings({k: v for k, v in to_dict(PreprocessConfig()).items() if k != "profile"})
    assert main(["preprocess", "--official-layout", str(official_root), "--out", str(videos.root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds data of profile 'bilayer', not 'official'" in err, err
    assert not (videos.root / "manifest.jsonl").exists()

    official = tmp_path / "official"
    run_official_import(official_root, official, progress=False)
    with pytest.raises(InputError, match="holds data of profile 'official', not 'bilayer'"):
        run_preprocess([SAMPLE_PHOTOS["astronaut"].path], official, progress=False)
    # videos cropped the official way: same profile, other settings
    with pytest.raises(InputError, match="made with other settings .*annotator: .* -> None"):
        DatasetStore(official).check_settings({**to_dict(PreprocessConfig()), "profile": "official"})


def test_settings_recorded_before_profiles_existed_still_resume(tmp_path):
    store = DatasetStore(tmp_path)
    store.prepare()
    old = {"min_frames": 1, "jpeg_quality": 95}  # a settings.json without "profile"
    (tmp_path / "settings.json").write_text(json.dumps(old))
    assert store.profile() == "bilayer"
    store.check_settings(old)
    store.check_settings({**old, "profile": "bilayer"})  # a config that has gained the key
    with pytest.raises(InputError, match="profile 'bilayer', not 'official'"):
        store.check_settings({**old, "profile": "official"})
    with pytest.raises(InputError, match=r"made with other settings \(jpeg_quality: 95 -> 90\)"):
        store.check_settings({**old, "jpeg_quality": 90, "profile": "bilayer"})
    assert json.loads((tmp_path / "settings.json").read_text()) == old

    official = DatasetStore(tmp_path / "official")
    official.check_settings({**old, "profile": "official"})
    with pytest.raises(InputError, match="profile 'official', not 'bilayer'"):
        official.check_settings(old)
    assert official.profile() == "official"


def test_manifest_lines_without_a_split_still_load(tmp_path):
    store = DatasetStore(tmp_path)
    store.prepare()
    line = {"clip_id": "c", "identity": "id00004", "source": "/v/a.mp4", "size": 1, "mtime_ns": 1,
            "file": "shards/00/c.zip", "num_frames": 3, "fps": 25.0, "source_width": 640, "source_height": 360,
            "face_size": 100.0}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    (clip,) = store.clips()
    assert clip.split is None
    assert PairDataset(tmp_path, DatasetConfig(split="test", test_fraction=0.5)).clips == [clip]  # the hash rule
    assert identity_split("id00004", 0.5) == "test"


def test_pair_dataset_keeps_the_official_split_and_draws_official_landmarks(imported, capsys):
    cfg = DatasetConfig(split="test")
    assert identity_split("id00002", cfg.test_fraction) == "train"  # the recorded split wins
    test = PairDataset(imported, cfg, profile="official", seed=0)
    assert test.identities == {"id00002"} and len(test) == 1
    train = PairDataset(imported, DatasetConfig(split="train", test_fraction=1.0), profile="official", seed=0)
    assert train.identities == {"id00001"} and len(train) == 2
    assert capsys.readouterr().err == ""  # same profile: no warning

    for ds in (test, train):
        for i in range(len(ds)):
            item = ds[i]
            for role in ("source", "target"):
                kp = getattr(item, role).keypoints.numpy()
                expected = draw_official_landmarks(kp, 256).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
                np.testing.assert_array_equal(getattr(item, role).landmark_image.numpy(), expected)
                assert getattr(item, role).image.shape == (3, 256, 256) and getattr(item, role).mask.max() == 1
                x, y = ((kp[30] + 1) / 2 * 256).astype(int)  # the nose tip is inside the seg
                assert getattr(item, role).mask[0, y, x] == 1


def test_flip_keeps_working_on_official_keypoints(imported):
    plain = PairDataset(imported, DatasetConfig(split="train", flip_probability=0), profile="official", seed=5)
    flipped = PairDataset(imported, DatasetConfig(split="train", flip_probability=1), profile="official", seed=5)
    a, b = plain[0], flipped[0]
    np.testing.assert_array_equal(b.source.keypoints.numpy(), flip_keypoints(a.source.keypoints.numpy()))
    assert torch.equal(b.source.image, a.source.image.flip(-1))


def test_a_model_of_another_profile_gets_one_warning_line(imported, capsys):
    ds = PairDataset(imported, DatasetConfig(split="all"), image_size=64)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(imported) in err and "'official'" in err and "'bilayer'" in err, err
    assert ds[0].source.landmark_image.shape == (3, 64, 64)
