"""Preprocessing profiles: the "official" profile makes the inputs of the authors' released code
(`infer.py: preprocess_data`, the Graphonomy wrapper's erosion, `datasets/utils.py: draw_stickmen`),
checked against hand-computed values, PIL itself and, where it is there, the reference code."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bilayer.data.landmarks import draw_official_landmarks, draw_profile_landmarks, landmark_image, normalize_keypoints
from bilayer.data.preprocess.annotator import OFFICIAL_EROSION_KERNEL, FaceAnnotator, erode_mask
from bilayer.data.preprocess.geometry import CropBox, FaceBox
from bilayer.errors import InputError

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/bilayer-model"


def keypoints_in_box(lo: tuple[float, float], hi: tuple[float, float], seed: int = 0) -> np.ndarray:
    """(68, 2) float32 keypoints whose bounding box is exactly lo..hi."""
    rng = np.random.default_rng(seed)
    kp = rng.uniform(lo, hi, (68, 2)).astype(np.float32)
    kp[0], kp[1] = lo, hi
    return kp


def their_crop(kp: np.ndarray) -> tuple[int, int, int]:
    """(x0, y0, side) by the rule of `infer.py`, written out here from its description."""
    center = ((kp.min(0) + kp.max(0)) / 2).round().astype(int)
    size = int(max(kp[:, 0].max() - kp[:, 0].min(), kp[:, 1].max() - kp[:, 1].min()))
    center[1] -= size // 6
    return int(center[0] - size), int(center[1] - size), 2 * size


def their_keypoints(kp: np.ndarray, box: CropBox) -> np.ndarray:
    """Normalized keypoints in `infer.py`'s order of operations on float32 keypoints:
    pose -= corner; pose /= side; (pose - 0.5) * 2."""
    pose = kp.copy()
    pose -= np.array([box.x0, box.y0])
    pose = pose / float(box.side)
    return (pose - 0.5) * 2


# --- crop rule and keypoint normalisation -------------------------------------------------------

@pytest.mark.parametrize("lo, hi, expected", [
    # centre (30.25, 41.0) -> (30, 41); size int(40.5) = 40, raised by 40 // 6 = 6
    ((10.25, 20.75), (50.25, 61.25), (-10, -5, 80)),
    # centre (30.5, 31.5) rounds half to even -> (30, 32); odd size 43, raised by 7
    ((10, 10), (51, 53), (-13, -18, 86)),
    # size int(41.9) = 41 (truncated, odd), centre x 120.95 -> 121, raised by 6
    ((100, 200), (141.9, 230), (80, 168, 82)),
    # a face at the frame's corner: the crop overhangs the frame
    ((0, 3), (30, 33), (-15, -17, 60)),
])
def test_official_crop_rule_on_hand_computed_boxes(lo, hi, expected):
    kp = keypoints_in_box(lo, hi)
    box = CropBox.official(FaceBox.from_keypoints(kp))
    assert (box.x0, box.y0, box.side) == expected


def test_official_crop_rule_matches_their_arithmetic_on_integer_keypoints():
    """dlib's keypoints are integers, so half-way centres (ties) are frequent."""
    rng = np.random.default_rng(1)
    ties = 0
    for _ in range(500):
        kp = rng.integers(0, 400, (68, 2)).astype(np.float32)
        ties += bool((((kp.min(0) + kp.max(0)) % 2) == 1).any())
        box = CropBox.official(FaceBox.from_keypoints(kp))
        assert (box.x0, box.y0, box.side) == their_crop(kp)
    assert ties > 100


def pil_crop(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The released code's crop, computed directly with PIL."""
    img = Image.fromarray(frame).crop((box.x0, box.y0, box.x0 + box.side, box.y0 + box.side))
    return np.asarray(img.resize((size, size), Image.BICUBIC))


@pytest.mark.parametrize("box", [
    CropBox(20, 10, 50),  # inside
    CropBox(-15, -17, 60),  # over the top-left corner: black there
    CropBox(90, 40, 71),  # over the right and bottom edges, odd side
    CropBox(-30, -20, 180),  # larger than the frame
])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_official_crop_is_pixel_for_pixel_pils(box, size):
    frame = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    crop = box.crop_official(frame, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8 and crop.flags.writeable
    np.testing.assert_array_equal(crop, pil_crop(frame, box, size))


def test_official_crop_pads_the_outside_with_zeros():
    frame = np.full((90, 120, 3), 200, np.uint8)
    crop = CropBox(-60, -60, 120).crop_official(frame, 64)  # the frame covers the bottom-right half
    assert crop[:28, :28].max() == 0 and crop[36:, 36:].min() == 200


def test_official_keypoint_normalisation():
    box = CropBox(-10, -5, 80)
    corners = np.array([[-10, -5], [70, 75], [30, 35]], np.float32)
    np.testing.assert_array_equal(box.normalize_official(corners), [[-1, -1], [1, 1], [0, 0]])
    kp = keypoints_in_box((10.25, 20.75), (50.25, 61.25))
    got = box.normalize_official(kp)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, their_keypoints(kp, box))
    # ours puts pixel centres on integers: the two differ by half a frame pixel, 1 / side normalized
    ours = normalize_keypoints(box.to_crop(kp, 256), 256)
    np.testing.assert_allclose(ours - got, 1 / box.side, atol=1e-6)


# --- mask erosion -------------------------------------------------------------------------------

def test_official_erosion_kernel_is_the_5px_disk():
    expected = np.ones((5, 5), np.uint8)
    expected[[0, 0, 4, 4], [0, 4, 0, 4]] = 0
    np.testing.assert_array_equal(OFFICIAL_EROSION_KERNEL, expected)


def test_erosion_shrinks_the_mask_by_the_disk():
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1
    eroded = erode_mask(mask)
    assert eroded.dtype == np.float32
    np.testing.assert_array_equal(eroded, np.pad(np.ones((16, 16), np.float32), 12))
    # a float mask: each pixel becomes the minimum over the disk around it
    soft = np.random.default_rng(3).random((30, 30)).astype(np.float32)
    eroded = erode_mask(soft)
    dy, dx = np.nonzero(OFFICIAL_EROSION_KERNEL)
    for y, x in [(2, 2), (10, 17), (27, 27)]:
        assert eroded[y, x] == min(soft[y + j - 2, x + i - 2] for j, i in zip(dy, dx))
    assert erode_mask(np.ones((8, 8), np.float32)).min() == 1  # the frame's border does not erode


# --- annotator, source photo, driving video -----------------------------------------------------

@pytest.fixture(scope="module")
def official_annotator() -> FaceAnnotator:
    return FaceAnnotator(profile="official")


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    from bilayer.data.samples import load_photo

    return load_photo("astronaut")


def frame_keypoints(ann) -> np.ndarray:
    """The (68, 2) frame keypoints behind a "bilayer" annotation (dlib's are integers)."""
    box = ann.crop_box
    kp = (ann.keypoints_px + 0.5) * box.side / 256 - 0.5 + (box.x0, box.y0)
    assert np.abs(kp - np.round(kp)).max() < 1e-3
    return np.round(kp).astype(np.float32)


def test_annotator_with_the_official_profile(annotator, official_annotator, portrait):
    annotator.reset()
    kp = frame_keypoints(annotator(portrait))  # the same detector and keypoints in both profiles
    official_annotator.reset()
    ann = official_annotator(portrait)
    face = FaceBox.from_keypoints(kp)
    assert ann.face == face
    box = ann.crop_box
    assert (box.x0, box.y0, box.side) == their_crop(kp)
    assert box.side == 2 * int(face.size)
    # keypoints where the released code's formula puts them, and the same point in pixels
    np.testing.assert_array_equal(ann.keypoints, their_keypoints(kp, box))
    np.testing.assert_allclose(normalize_keypoints(ann.keypoints_px, 256), ann.keypoints, atol=1e-6)
    np.testing.assert_array_equal(ann.image, pil_crop(portrait, box, 256))
    raw = official_annotator.segmenter(ann.image)
    np.testing.assert_array_equal(ann.mask, erode_mask(raw))
    assert ann.mask.mean() < raw.mean() - 0.005


def test_unknown_profile_or_crop_mode_is_refused():
    with pytest.raises(ValueError, match="profile"):
        FaceAnnotator(profile="authors")
    with pytest.raises(ValueError, match="crop"):
        FaceAnnotator(crop="jittery")


def test_driver_crop_choices_are_the_annotators_crop_modes():
    from bilayer.data.preprocess.annotator import CROP_MODES
    from bilayer.runtime.choices import DRIVER_CROPS  # listed without importing torch, for the CLI

    assert DRIVER_CROPS == CROP_MODES


def test_crop_source_with_each_profile(annotator, official_annotator, portrait):
    from bilayer.runtime.faces import crop_source

    for profile, reference in (("bilayer", annotator), ("official", official_annotator)):
        reference.reset()
        expected = reference(portrait)
        face = crop_source(portrait, 256, profile)
        assert face.profile == profile
        np.testing.assert_array_equal(face.image, expected.image)
        np.testing.assert_array_equal(face.keypoints, expected.keypoints)
        np.testing.assert_array_equal(face.mask, expected.mask)
        landmarks = face.frame().landmark_image  # (1, 3, S, S) in [-1, 1]
        assert torch.equal(landmarks, landmark_image(torch.from_numpy(face.keypoints), 256, profile))
    official = draw_official_landmarks(face.keypoints, 256).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(landmarks[0].numpy(), official, atol=1e-6)
    assert (landmarks == 1 / 127.5 - 1).float().mean() > 0.9  # the official background is 1 (of 255), not 0


def test_exact_driver_crops_follow_the_official_rule_on_every_frame(sample_video):
    """Keypoints of an exact official crop: box centred in x, raised by 1/6 of the face size,
    as wide as the face size (up to the integer rounding) -- on every frame."""
    from bilayer.runtime.pipeline import track_video

    tracks = {}
    for mode in ("smoothed", "exact"):
        _, _, frames = track_video(sample_video, 64, 20, "official", mode)
        tracks[mode] = np.stack([f.keypoints for f in frames])  # (20, 68, 2)
    lo, hi = tracks["exact"].min(1), tracks["exact"].max(1)  # (20, 2)
    extent = (hi - lo).max(1)
    assert ((extent > 1 - 1e-6) & (extent < 1.02)).all()
    centre = (lo + hi) / 2
    assert np.abs(centre[:, 0]).max() < 0.01 and np.abs(centre[:, 1] - 1 / 6).max() < 0.02
    np.testing.assert_array_equal(tracks["exact"][0], tracks["smoothed"][0])  # one frame: nothing smoothed
    assert np.abs(tracks["exact"] - tracks["smoothed"]).max() > 0.01


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> Path:
    from bilayer.checkpoint import save_checkpoint
    from bilayer.nets import BilayerModel
    from tests.nets_helpers import randomize_norm_stats, tiny_config

    torch.manual_seed(0)
    model = BilayerModel(tiny_config(preprocessing="official"))
    randomize_norm_stats(model)
    path = tmp_path_factory.mktemp("official") / "official.pt"
    save_checkpoint(path, model)
    return path


def frame_count(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return len(frames), frames[0].width


@pytest.mark.parametrize("driver_crop", ["smoothed", "exact"])
def test_animate_an_official_checkpoint(driver_crop, media_dir, sample_video, official_checkpoint, tmp_path):
    from bilayer.runtime.pipeline import AnimateOptions, animate

    out = tmp_path / f"{driver_crop}.mp4"
    options = AnimateOptions(side_by_side=True, max_frames=12, driver_crop=driver_crop)
    result = animate(media_dir / "bob" / "portrait.png", out, official_checkpoint, sample_video, options=options,
                     progress=False)
    assert result.frames == 12 and result.faceless_frames == 0
    assert frame_count(out) == (12, 3 * 64)


def test_animate_cli_driver_crop_and_its_one_line_error(media_dir, sample_video, official_checkpoint, tmp_path,
                                                        capsys):
    from bilayer.cli.main import main
    from bilayer.runtime.pipeline import AnimateOptions

    out = tmp_path / "exact.mp4"
    args = ["animate", "--source", str(media_dir / "bob" / "portrait.png"), "--driver", str(sample_video),
            "--out", str(out), "--checkpoint", str(official_checkpoint), "--max-frames", "5", "--quiet"]
    assert main([*args, "--driver-crop", "exact"]) == 0
    assert "5 frames" in capsys.readouterr().out and frame_count(out)[0] == 5
    with pytest.raises(InputError, match="driver_crop must be one of smoothed, exact, got 'shaky'"):
        AnimateOptions(driver_crop="shaky")


def test_avatar_of_an_official_checkpoint_uses_the_official_source_crop(media_dir, official_checkpoint, portrait):
    from bilayer.runtime import Avatar
    from bilayer.runtime.faces import crop_source

    avatar = Avatar.from_image(portrait, official_checkpoint)
    expected = crop_source(portrait, 64, "official")
    assert avatar.source_face.profile == "official"
    np.testing.assert_array_equal(avatar.source_face.keypoints, expected.keypoints)


def test_track_cli_follows_the_checkpoints_profile(sample_video, tiny_checkpoint, official_checkpoint, tmp_path,
                                                   capsys):
    from bilayer.cli.main import main
    from bilayer.runtime.pipeline import track_video

    tracks = {}
    for name, checkpoint in (("bilayer", tiny_checkpoint), ("official", official_checkpoint)):
        out = tmp_path / f"{name}.npy"
        args = ["track", str(sample_video), "--out", str(out), "--max-frames", "6", "--checkpoint", str(checkpoint)]
        assert main([*args, "--quiet"]) == 0
        tracks[name] = np.load(out)
    capsys.readouterr()
    _, _, frames = track_video(sample_video, 64, 6, "official")
    np.testing.assert_allclose(tracks["official"], np.stack([f.keypoints for f in frames]), atol=1e-6)
    # the official crop is tighter (2 x the face size instead of 2.2 x): the keypoints spread more
    spread = {k: np.ptp(t[..., 0], axis=1).mean() for k, t in tracks.items()}
    assert spread["official"] > 1.05 * spread["bilayer"]


def test_preprocess_with_the_official_profile(media_dir, official_annotator, portrait, tmp_path):
    from bilayer.data.preprocess.pipeline import PreprocessConfig, run_preprocess
    from bilayer.data.store import ClipReader, DatasetStore

    summary = run_preprocess([media_dir / "bob" / "portrait.png"], tmp_path, PreprocessConfig(profile="official"),
                             progress=False)
    assert summary.clips_ok == 1
    (clip,) = DatasetStore(tmp_path).clips()
    official_annotator.reset()
    expected = official_annotator(portrait)
    with ClipReader(tmp_path / clip.file) as reader:
        np.testing.assert_array_equal(reader.array("keypoints")[0], expected.keypoints)
        np.testing.assert_array_equal(reader.array("crop_boxes")[0], expected.crop_box.as_array())


# --- landmark image against the reference code --------------------------------------------------

def reference_utils():
    """The released code's `datasets/utils.py`, loaded from its file (it imports numpy, torch, cv2)."""
    if not (REFERENCE / "datasets" / "utils.py").is_file():
        pytest.skip(f"the authors' reference code is not at {REFERENCE}")
    spec = importlib.util.spec_from_file_location("bilayer_reference_datasets_utils", REFERENCE / "datasets/utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size", [64, 127, 256])
def test_official_landmark_image_is_pixel_identical_to_draw_stickmen(size):
    utils = reference_utils()
    args = SimpleNamespace(folder_postfix="2d_crop", image_size=size, stickmen_thickness=2)
    keypoints = np.random.default_rng(size).uniform(-1.1, 1.1, (6, 68, 2)).astype(np.float32)  # some outside
    theirs = utils.draw_stickmen(args, torch.from_numpy(keypoints).view(6, -1))  # (6, 3, S, S): (u8 / 255 - 0.5) * 2
    theirs_u8 = np.round((theirs.numpy() / 2 + 0.5) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for k, expected in zip(keypoints, theirs_u8):
        np.testing.assert_array_equal(draw_profile_landmarks(k, size, "official"), expected)
    np.testing.assert_allclose(landmark_image(torch.from_numpy(keypoints), size, "official").numpy(), theirs.numpy(),
                               atol=1e-6)
