"""Runtime: A.3 folding, the avatar wrapper, backends, motion transfer, and `bilayer animate`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from bilayer.cli.main import main
from bilayer.nets import BilayerModel
from bilayer.runtime import Avatar
from bilayer.runtime.fold import FrameNet, SubpixelUpConv3x3, UpConv3x3, fold_generator
from bilayer.runtime.motion import RelativeMotion, hull_area, motion_samples
from tests.nets_helpers import dummy_batch, randomize_norm_stats, tiny_avatar, tiny_config


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| (Frobenius)."""
    return float(torch.linalg.vector_norm(a - ref) / torch.linalg.vector_norm(ref))


def test_up_conv_equals_conv_of_nearest_upsampling():
    """Both forms (transposed conv for torch, sub-pixel for ONNX) = conv3x3(up(z)) + up(res)."""
    torch.manual_seed(0)
    z, res = torch.randn(2, 5, 6, 6), torch.randn(2, 7, 6, 6)
    w, b = torch.randn(7, 5, 3, 3), torch.randn(7)
    up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
    direct = F.conv2d(up(z), w, b, padding=1) + up(res)
    transposed = UpConv3x3(w, b)
    assert torch.allclose(transposed(z, res), direct, atol=1e-5)
    assert torch.allclose(SubpixelUpConv3x3(transposed)(z, res), direct, atol=1e-5)


@pytest.mark.parametrize("size", ["medium", "baseline"])
def test_folding_matches_the_adaptive_model(size):
    """Adaptive params + spectral norm + BN folded (A.3): outputs change by <= 1e-5 relative."""
    torch.manual_seed(0)
    cfg = tiny_config(size)
    model = BilayerModel(cfg)
    randomize_norm_stats(model)
    model.eval()
    x = dummy_batch(cfg, b=3)
    with torch.no_grad():
        state = model.initialize(x.image[:1], x.landmark_image[:1], x.mask[:1])
        ref = model.render(x.keypoints, state)
        net = fold_generator(model.inference_generator, state.inference_params, state.texture)
        image, mask = net(x.keypoints)
    assert relative_error(image, ref.image) <= 1e-5
    assert relative_error(mask, ref.mask) <= 1e-5
    # An ordinary static network: no parametrizations, only plain layers, nothing trainable.
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    kinds = {type(m).__name__ for m in net.modules()}
    assert kinds <= {"FrameNet", "Sequential", "Linear", "LeakyReLU", "FrameBlock", "Affine", "Conv2d", "UpConv3x3",
                     "ConvTranspose2d"}
    assert not any(p.requires_grad for p in net.parameters())


def test_folded_network_executes_fewer_macs_than_the_paper_count():
    from bilayer.metrics.complexity import frame_macs

    model = BilayerModel(tiny_config()).eval()
    s = model.cfg.image_size
    with torch.no_grad():
        state = model.initialize(torch.zeros(1, 3, s, s), torch.zeros(1, 3, s, s))
    net = fold_generator(model.inference_generator, state.inference_params, state.texture)
    assert net.macs() < frame_macs(model.cfg, model)["macs"]


def test_fold_rejects_a_batch_of_avatars():
    model = BilayerModel(tiny_config()).eval()
    x = dummy_batch(model.cfg, b=2)
    with torch.no_grad():
        state = model.initialize(x.image, x.landmark_image)
    with pytest.raises(ValueError, match="batch 1"):
        fold_generator(model.inference_generator, state.inference_params, state.texture)


def test_render_of_source_keypoints_reproduces_the_unfolded_render():
    avatar, x = tiny_avatar()
    assert isinstance(avatar.frame_net, FrameNet)
    image, mask = avatar.render(x.keypoints[0].numpy())
    with torch.no_grad():
        reference = avatar.model.render(x.keypoints, avatar.state)
    assert relative_error(image, reference.image) <= 1e-5 and relative_error(mask, reference.mask) <= 1e-5


@pytest.mark.parametrize("backend", ["torch/bf16", "onnxruntime/fp32", "onnxruntime/int8"])
def test_backends_match_torch_fp32(backend):
    from bilayer.metrics.psnr import psnr

    if backend.startswith("onnxruntime"):
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = BilayerModel(tiny_config())
    randomize_norm_stats(model)
    x = dummy_batch(model.cfg, b=1)
    reference = Avatar(model, precision="fp32")
    reference.initialize(x)
    avatar = Avatar(model, *backend.split("/"))
    avatar.initialize(x)
    keypoints = torch.from_numpy(motion_samples(x.keypoints[0].numpy(), 4, seed=1))
    (ref, ref_mask), (out, mask) = reference.render(keypoints), avatar.render(keypoints)
    assert out.shape == ref.shape and out.dtype == torch.float32 and mask.shape == ref_mask.shape
    if backend == "onnxruntime/fp32":
        assert (out - ref).abs().max() <= 1e-4
    elif backend == "torch/bf16":
        assert psnr(out.numpy(), ref.numpy()) >= 40
    else:  # per-tensor uint8 activations: int8 is the least exact path (benchmarks/runtime.py
        assert psnr(out.numpy(), ref.numpy()) >= 30  # prints medium at ~35 dB; bf16 is the >= 40 dB one)


def test_cli_backend_choices_are_the_runners_and_help_stays_light():
    import argparse
    import subprocess
    import sys

    from bilayer.cli.main import build_parser
    from bilayer.runtime.backends import RUNNERS
    from bilayer.runtime.choices import BACKENDS, PRECISIONS, RUNNER_PRECISIONS

    assert list(RUNNERS) == [f"{b}/{p}" for b, ps in RUNNER_PRECISIONS.items() for p in ps]
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("animate", "demo", "serve"):
        actions = {a.dest: a for a in commands[command]._actions}
        assert actions["backend"].choices == BACKENDS and actions["precision"].choices == PRECISIONS
        assert actions["precision"].default == "auto" == PRECISIONS[0]
    assert {a.dest: a for a in commands["export"]._actions}["precision"].default == "auto"
    code = "import sys; from bilayer.cli.main import build_parser; build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_loads_nothing_of_training_losses_or_the_dataset_writer():
    """The runtime, file side included (photo and driver annotation), stays off the training
    code, the losses and the preprocessing's dataset writer and store."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import bilayer.cli.animate, bilayer.cli.demo, bilayer.runtime.pipeline, bilayer.runtime.faces\n"
        "from bilayer.runtime import Avatar\n"
        "import bilayer.data.preprocess.annotator, bilayer.io.media\n"
        "banned = ('bilayer.training', 'bilayer.losses', 'bilayer.data.preprocess.pipeline', 'bilayer.data.store')\n"
        "loaded = [m for m in sys.modules if m.startswith(banned)]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_video_codec_choice():
    from bilayer.data.synthetic import clips
    from bilayer.io import video

    assert clips.video_codec is video.video_codec


def test_unknown_backend_is_an_input_error():
    from bilayer.errors import InputError

    with pytest.raises(InputError, match="torch/int8"):
        Avatar(BilayerModel(tiny_config()), "torch", "int8")


def test_relative_motion_keeps_the_source_shape():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], np.float32)
    assert hull_area(square) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    source = rng.uniform(-0.5, 0.5, (68, 2)).astype(np.float32)
    driver0 = rng.uniform(-0.3, 0.3, (68, 2)).astype(np.float32) * 2  # a face twice as large
    motion = RelativeMotion(source, driver0)
    assert np.allclose(motion(driver0), source)
    moved = driver0 + np.array([0.2, -0.1], np.float32)  # the driver's head moves
    assert np.allclose(motion(moved) - source, np.array([0.2, -0.1]) * motion.scale, atol=1e-6)
    assert motion.scale == pytest.approx(np.sqrt(hull_area(source) / hull_area(driver0)))


# ---- bilayer animate ----------------------------------------------------------------------------


def probe(path):
    import av

    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        return frames, (video.width, video.height), float(video.average_rate), len(c.streams.audio)


def run_animate(capsys, *args):
    code = main(["animate", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_animate_keeps_frame_count_rate_and_audio(media_dir, sample_video, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "self.mp4"
    code, stdout, _ = run_animate(capsys, "--source", media_dir / "bob" / "portrait.png", "--driver", sample_video,
                                  "--out", out, "--checkpoint", tiny_checkpoint)
    assert code == 0 and "50 frames" in stdout
    assert "(torch/bf16: " in stdout or "(torch/fp32: " in stdout  # --precision auto, resolved and explained
    assert probe(out) == (50, (64, 64), 25.0, 1)  # 2 s at 25 fps, audio kept


def test_animate_relative_side_by_side_without_audio(media_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cross.mp4"
    code, _, _ = run_animate(capsys, "--source", media_dir / "bob" / "portrait.png",
                             "--driver", media_dir / "bob" / "talk.mkv", "--out", out,
                             "--checkpoint", tiny_checkpoint, "--relative", "--side-by-side", "--max-frames", "12")
    assert code == 0
    assert probe(out) == (12, (3 * 64, 64), 25.0, 0)


def test_animate_from_a_keypoint_track_with_onnxruntime(media_dir, tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    track = tmp_path / "track.npy"
    np.save(track, motion_samples(np.zeros((68, 2), np.float32) + 0.1, 7))
    out = tmp_path / "track.mkv"
    code, _, _ = run_animate(capsys, "--source", media_dir / "bob" / "portrait.png", "--keypoints", track,
                             "--out", out, "--checkpoint", tiny_checkpoint, "--backend", "onnxruntime", "--fps", "10")
    assert code == 0
    assert probe(out) == (7, (64, 64), 10.0, 0)


def test_animate_puts_the_foreground_on_the_chosen_background(media_dir, tiny_checkpoint, tmp_path, capsys):
    """output = render * mask + background * (1 - mask): white minus black is 255 * (1 - mask);
    `none` keeps the raw render."""
    import av

    track = tmp_path / "track.npy"
    np.save(track, motion_samples(np.zeros((68, 2), np.float32) + 0.1, 2))
    source = media_dir / "bob" / "portrait.png"
    first = {}
    for background in ("white", "black", "none"):
        out = tmp_path / f"{background}.mkv"
        code, _, _ = run_animate(capsys, "--source", source, "--keypoints", track, "--out", out,
                                 "--checkpoint", tiny_checkpoint, "--background", background)
        assert code == 0
        with av.open(str(out)) as c:
            first[background] = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32) / 255
    avatar = Avatar.from_image(source, tiny_checkpoint)
    image, mask = avatar.render(np.load(track)[0])
    outside = 1 - mask[0, 0].numpy()[..., None]  # (S, S, 1)
    assert outside.mean() > 0.1  # enough background to see
    assert np.abs(first["white"] - first["black"] - outside).mean() < 0.03  # video coding error
    raw = (image[0].permute(1, 2, 0).numpy() + 1) / 2
    assert np.abs(first["none"] - raw.clip(0, 1)).mean() < 0.03


def bad_track(tmp_path, kind):
    path = tmp_path / f"{kind}.npy"
    track = np.zeros((5, 68, 2), np.float32)
    if kind == "shape":
        track = track[:, :67]
    elif kind == "strings":
        track = np.full((5, 68, 2), "a")
    else:
        track[2, 10, 1] = np.nan
    np.save(path, track)
    return path


@pytest.mark.parametrize("case", ["no_face", "undecodable", "shape", "strings", "nan"])
def test_animate_bad_input_is_one_line_and_leaves_no_file(case, media_dir, tiny_checkpoint, tmp_path, capsys):
    from bilayer.data.samples import SAMPLE_PHOTOS

    source, drive = media_dir / "bob" / "portrait.png", ["--driver", media_dir / "alice" / "interview.mp4"]
    if case == "no_face":
        source = SAMPLE_PHOTOS["chelsea"].path  # a cat
    elif case == "undecodable":
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4096))
        drive = ["--driver", broken]
    else:
        drive = ["--keypoints", bad_track(tmp_path, case)]
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir()
    code, _, err = run_animate(capsys, "--source", source, *drive, "--out", out, "--checkpoint", tiny_checkpoint)
    expected = {"no_face": "no face found", "undecodable": "broken.mp4", "shape": "(T, 68, 2)",
                "strings": "strings.npy: keypoints must be numbers", "nan": "NaN"}[case]
    assert code == 2 and expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert list(out.parent.iterdir()) == []  # no partial or temporary file


@pytest.mark.parametrize("option, value, message", [
    ("--fps", "-5", "fps must be a number > 0, got -5"),
    ("--fps", "0", "fps must be a number > 0, got 0"),
    ("--max-frames", "-3", "max_frames must be >= 1, got -3"),
    ("--max-frames", "0", "max_frames must be >= 1, got 0"),
])
def test_animate_rejects_bad_fps_and_max_frames_up_front(option, value, message, media_dir, tmp_path, capsys):
    track = tmp_path / "track.npy"
    np.save(track, motion_samples(np.zeros((68, 2), np.float32) + 0.1, 3))
    out = tmp_path / "out.mp4"
    code, _, err = run_animate(capsys, "--source", media_dir / "bob" / "portrait.png", "--keypoints", track,
                               "--out", out, "--checkpoint", tmp_path / "missing.pt", option, value)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err  # before the checkpoint
    assert not out.exists()


def test_track_rejects_max_frames_below_one(sample_video, tmp_path, capsys):
    out = tmp_path / "track.npy"
    assert main(["track", str(sample_video), "--out", str(out), "--max-frames", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_frames must be >= 1, got 0" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_track_then_animate_from_the_stored_track(media_dir, sample_video, tiny_checkpoint, tmp_path, capsys):
    track = tmp_path / "drive.npy"
    assert main(["track", str(sample_video), "--out", str(track), "--quiet"]) == 0
    assert "50 frames at 25 fps" in capsys.readouterr().out
    keypoints = np.load(track)
    assert keypoints.shape == (50, 68, 2) and np.isfinite(keypoints).all() and np.abs(keypoints).max() < 1.5
    # The same keypoints as driving with the video itself (one detector, one smoothed crop).
    from bilayer.runtime.pipeline import track_video

    _, _, frames = track_video(sample_video, 64, None)
    np.testing.assert_allclose(keypoints, np.stack([f.keypoints for f in frames]), atol=1e-6)
    out = tmp_path / "from_track.mp4"
    code, _, _ = run_animate(capsys, "--source", media_dir / "bob" / "portrait.png", "--keypoints", track,
                             "--out", out, "--checkpoint", tiny_checkpoint, "--relative", "--fps", "25")
    assert code == 0 and probe(out) == (50, (64, 64), 25.0, 0)


def test_track_of_a_faceless_video_is_one_line(tmp_path, capsys):
    from bilayer.data.samples import encode_video, load_photo

    cat = load_photo("chelsea")[:256, :256]
    video = encode_video(tmp_path / "cat.mp4", np.stack([cat] * 5), 25, "mpeg4", audio=False)
    out = tmp_path / "cat.npy"
    assert main(["track", str(video), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cat.mp4: no face found" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_contact_sheet_spreads_rows_over_a_stream_of_unknown_length(tmp_path):
    from bilayer.runtime.sheet import ContactSheet

    sheet = ContactSheet(rows=4)
    for i in range(1000):
        sheet.add(i, np.full((8, 24, 3), i % 256, np.uint8))
    assert len(sheet.kept) <= 8  # bounded memory
    indices = [i for i, _ in sheet.kept]
    assert indices[0] == 0 and indices[-1] >= 1000 - 2 * sheet.stride
    path = sheet.write(tmp_path / "sheet.png")
    import cv2

    image = cv2.imread(str(path))
    assert image.shape == (24 + 4 * 8, 24, 3)


def test_demo_writes_video_side_by_side_and_contact_sheet(tiny_checkpoint, tmp_path, capsys):
    from bilayer.assets import DEMO_TRACK

    frames = len(np.load(DEMO_TRACK))
    assert main(["demo", "--out", str(tmp_path), "--checkpoint", str(tiny_checkpoint), "--quiet"]) == 0
    assert f"demo: {frames} frames" in capsys.readouterr().out
    assert probe(tmp_path / "output.mp4") == (frames, (64, 64), 25.0, 0)
    assert probe(tmp_path / "side_by_side.mp4") == (frames, (3 * 64, 64), 25.0, 0)
    import cv2

    assert cv2.imread(str(tmp_path / "contact_sheet.png")).shape == (24 + 6 * 64, 3 * 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contact_sheet.png", "output.mp4", "side_by_side.mp4"]


def test_demo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "demo"
    file.write_text("not a folder")
    assert main(["demo", "--out", str(file), "--checkpoint", str(tmp_path / "missing.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{file}: not a folder" in err and len(err.strip().splitlines()) == 1


def test_photo_crops_share_one_loaded_annotator(media_dir):
    """Source crops reuse one loaded annotator per (size, profile): a long-running process (the
    server) neither reloads the detectors nor grows (MediaPipe graphs hold native threads) with
    each avatar; each crop reports its stages."""
    import os

    from bilayer.runtime.faces import FACE_STAGES, crop_source, photo_annotator
    from bilayer.timing import StageTimer

    photo = media_dir / "bob" / "portrait.png"
    crop_source(photo, 64)
    before = len(os.listdir("/proc/self/task"))
    for _ in range(3):
        timer = StageTimer()
        crop_source(photo, 64, timer=timer)
        assert set(timer.seconds) == set(FACE_STAGES.values()) and all(v > 0 for v in timer.seconds.values())
    assert len(os.listdir("/proc/self/task")) == before
    assert photo_annotator(64, "bilayer")[1] is photo_annotator(64, "bilayer")[1]


def test_quiet_stderr_from_several_threads_leaves_stderr_working():
    import os
    import threading

    from bilayer.io.native import quiet_stderr

    before = os.fstat(2)

    def silence() -> None:
        for _ in range(50):
            with quiet_stderr():
                pass

    threads = [threading.Thread(target=silence) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # fd 2 is the real stderr again
