"""The authors' released weights in our runtime (`bilayer convert official`, docs/official_weights.md).

Two sources of truth:
* tests/fixtures/official (scripts/make_official_fixture.py): a reduced released-format run pair
  with realistic random weights and their code's outputs, so CI checks parity with no reference;
* their code itself in ../shared/reference/bilayer-model (tests/official_oracle.py), when present:
  a full-size (paper medium) run pair built, converted and compared in the same test, and a run
  with rough random weights compared against their code's own float noise.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bilayer.checkpoint import load_model, read_checkpoint
from bilayer.cli.main import main
from bilayer.config import to_dict
from bilayer.data.landmarks import draw_official_landmarks
from bilayer.training.config import load_train_config
from tests import official_oracle as oracle
from tests.official_oracle import avatar_diffs, max_diff, network_diffs

FIXTURE = Path(__file__).parent / "fixtures" / "official"
FINETUNE = Path(__file__).resolve().parents[1] / "configs" / "official_finetune.yaml"
#: Max |ours - theirs| of the unfolded networks (bit-exact on the CPU that wrote the fixture;
#: another CPU's kernels may round differently) and of the folded per-frame network / ONNX Runtime.
EXACT, FOLDED = 1e-5, 1e-4
needs_reference = pytest.mark.skipif(not oracle.available(), reason=f"the authors' code is not in {oracle.REFERENCE}")


def convert(tmp_path: Path, *args: str, base: Path = FIXTURE / "base", enhancer: Path | None = FIXTURE / "enhancer") -> Path:
    out = tmp_path / "official.pt"
    argv = ["convert", "official", "--base", str(base), "--out", str(out), *args]
    assert main(argv + (["--enhancer", str(enhancer)] if enhancer else [])) == 0
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return torch.load(FIXTURE / "outputs.pt", weights_only=True)["pairs"]


# --- the committed fixture -----------------------------------------------------------------------

def test_convert_writes_a_checkpoint_of_their_layout(converted, capsys):
    ckpt = read_checkpoint(converted)
    cfg = ckpt["model_config"]
    assert (cfg["projection_layout"], cfg["embedding_tap"], cfg["source_average"], cfg["guide_loss_scale"],
            cfg["bn_eps"], cfg["preprocessing"], cfg["align_corners"]) == (
        "official", "features", "encoder", 0.5, 1e-7, "official", False)
    assert (cfg["image_size"], cfg["tex_projection_size"], cfg["inf_projection_size"], cfg["upd_num_blocks"]) == (64, 32, 16, 2)
    meta = ckpt["meta"]
    assert meta["networks"] == ["embedder", "inference_generator", "texture_generator", "updater"]
    assert "discriminator" in ckpt
    assert meta["updater_trained"] is True
    assert meta["converted_from"]["discriminator"].endswith("enhancer/checkpoints/1_discriminator.pth")
    model, _ = load_model(converted)
    assert model.cfg.upd_steps == 4


def test_every_network_matches_their_code(converted, pairs):
    for theirs in pairs:
        diffs = network_diffs(converted, theirs)
        assert max(diffs.values()) <= EXACT, diffs


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_avatar_renders_their_enhanced_image(converted, pairs, backend):
    """The folded per-frame network (and its ONNX graph) after the 4 updater steps."""
    model, _ = load_model(converted)
    for theirs in pairs:
        image, mask = avatar_diffs(model, theirs, backend)
        assert image <= FOLDED and mask <= FOLDED, (image, mask)


def test_base_run_alone_gives_a_model_without_updater_steps(tmp_path, pairs):
    out = convert(tmp_path, enhancer=None)
    ckpt = read_checkpoint(out)
    assert "updater" not in ckpt["meta"]["networks"] and ckpt["meta"]["updater_trained"] is False
    assert "discriminator" in ckpt
    assert ckpt["meta"]["converted_from"]["discriminator"].endswith("base/checkpoints/2_discriminator.pth")
    model, _ = load_model(out)
    assert model.cfg.upd_steps == 0
    image, mask = avatar_diffs(model, pairs[0], enhanced=False)
    assert image <= FOLDED and mask <= FOLDED


def copy_runs(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(FIXTURE / "base", tmp_path / "base")
    shutil.copytree(FIXTURE / "enhancer", tmp_path / "enhancer")
    return tmp_path / "base", tmp_path / "enhancer"


def test_epochs_latest_complete_or_given(tmp_path, capsys):
    base, enhancer = copy_runs(tmp_path)
    shutil.copy(base / "checkpoints" / "2_identity_embedder.pth", base / "checkpoints" / "7_identity_embedder.pth")
    for name in ("opt_identity_embedder", "notes"):  # their optimizer files and strays are not networks
        (base / "checkpoints" / f"9_{name}.pth").write_bytes(b"x")
    out = convert(tmp_path, base=base, enhancer=enhancer)  # epoch 7 lacks networks: epoch 2
    assert read_checkpoint(out)["meta"]["converted_from"]["texture_generator"].endswith("2_texture_generator.pth")
    assert main(["convert", "official", "--base", str(base), "--epoch", "7", "--out", str(tmp_path / "x.pt")]) == 2
    assert f"{base / 'checkpoints' / '7_texture_generator.pth'}: missing" in capsys.readouterr().err
    assert main(["convert", "official", "--base", str(base), "--enhancer", str(enhancer), "--enhancer-epoch", "3",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "3_texture_enhancer.pth: missing" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def _set_arg(run: Path, key: str, value: str) -> None:
    lines = [f"{key}: {value}" if line.startswith(f"{key}: ") else line for line in (run / "args.txt").read_text().splitlines()]
    (run / "args.txt").write_text("\n".join(lines) + "\n")


def _edit_state(run: Path, name: str, edit) -> None:
    path = next((run / "checkpoints").glob(f"*_{name}.pth"))
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


BAD_RUNS = {
    "no args.txt": (lambda b, e: (b / "args.txt").unlink(), "args.txt: missing"),
    "missing network": (lambda b, e: (b / "checkpoints" / "2_texture_generator.pth").unlink(),
                        "no epoch with <epoch>_identity_embedder.pth"),
    "another shape": (lambda b, e: _edit_state(b, "keypoints_embedder", lambda s: s.update(
        {"net.mlp.6.bias": torch.zeros(7)})), "inference_generator.mlp.6.bias has shape (7,)"),
    "unexpected tensor": (lambda b, e: _edit_state(e, "texture_enhancer", lambda s: s.update(
        {"net.blocks.99.weight": torch.zeros(1)})), "1 unexpected tensor: net.blocks.99.weight"),
    "missing tensor": (lambda b, e: _edit_state(b, "identity_embedder", lambda s: s.pop("net.enc.0.bias")),
                       "1 tensor missing for our embedder: embedder.stem.bias"),
    "harmonic encoding": (lambda b, e: _set_arg(b, "pse_use_harmonic_enc", "True"),
                          "unsupported option pse_use_harmonic_enc=True (supported: False)"),
    "no spectral norm": (lambda b, e: _set_arg(e, "spn_networks", "discriminator"), "spn_networks='discriminator'"),
    "truncated file": (lambda b, e: (b / "checkpoints" / "2_inference_generator.pth").write_bytes(b"PK\x03\x04"),
                       "2_inference_generator.pth: not a readable state dict"),
    "another base": (lambda b, e: _set_arg(e, "inf_max_channels", "16"), "differs from the base run in inf_max_channels"),
}


@pytest.mark.parametrize("case", BAD_RUNS)
def test_bad_run_folders_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, case):
    base, enhancer = copy_runs(tmp_path)
    spoil, message = BAD_RUNS[case]
    spoil(base, enhancer)
    out = tmp_path / "out" / "official.pt"
    assert main(["convert", "official", "--base", str(base), "--enhancer", str(enhancer), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bilayer convert: error: ") and message in err, err
    assert not out.exists() and not any(tmp_path.glob("out/*"))


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["convert", "official", "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "nope: not a run folder" in capsys.readouterr().err
    assert main(["convert", "official", "--base", str(FIXTURE / "base"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "output must end in .pt" in capsys.readouterr().err


def test_align_corners_option_is_recorded_and_used(tmp_path, pairs):
    out = convert(tmp_path, "--align-corners")
    model = load_model(out)[0].eval()
    assert model.cfg.align_corners is True
    # Their code under torch < 1.3 sampled with align_corners=True: a different image, same LF.
    source, target = oracle.frames(pairs[0])
    with torch.no_grad():
        state = model.initialize(source.image, source.landmark_image, source.mask)
        rendered = model.render(target.keypoints, state)
    assert max_diff(rendered.lf, pairs[0]["lf"]) <= EXACT
    assert max_diff(rendered.image, pairs[0]["image"]) > 1e-3


def test_landmark_images_match_their_drawing():
    their = np.load(FIXTURE / "stickmen.npz")
    for size in (64, 256):
        assert np.array_equal(draw_official_landmarks(their["keypoints"], size), their[f"size{size}"])


@pytest.mark.slow
def test_converted_checkpoint_fine_tunes_and_runs_everywhere(converted, media_dir, tmp_path, capsys):
    """`train --weights` on data imported from their layout with configs/official_finetune.yaml, then
    evaluate, export and demo with the converted file (animate and track: tests/test_profiles.py
    with an official-profile model, and the full-size test below)."""
    from tests.test_official_layout import build_official_tree

    data = tmp_path / "data"
    # Their tree holds two sequences without a usable frame on purpose: exit code 3 (skips).
    assert main(["preprocess", "--official-layout", str(build_official_tree(tmp_path / "theirs")), "--out",
                 str(data), "--quiet"]) == 3
    model_fields = [f"model.{k}={v}" for k, v in read_checkpoint(converted)["model_config"].items()]
    recipe = ["base.iterations=2", "updater.iterations=1", "base.batch_size=2", "updater.batch_size=2",
              "standing_stats_batches=1", "num_workers=0", "log_every=1"]
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--config", str(FINETUNE), "--data", str(data), "--out", str(run), "--weights", str(converted),
                 *model_fields, *recipe]) == 0
    out, err = capsys.readouterr()
    assert f"networks from {converted}: embedder, inference_generator, texture_generator, updater, discriminator" in out
    assert "profile" not in err  # data and model of the same profile: no warning
    tuned = run / "checkpoints" / "final.pt"
    assert read_checkpoint(tuned)["model_config"] == read_checkpoint(converted)["model_config"]

    assert main(["evaluate", "--checkpoint", str(tuned), "--data", str(data), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_clips"] == 1  # their test/ person
    photo = str(media_dir / "bob" / "portrait.png")
    assert main(["export", "--checkpoint", str(converted), "--source", photo, "--out", str(tmp_path / "a.onnx")]) == 0
    assert main(["demo", "--checkpoint", str(converted), "--source", photo, "--out", str(tmp_path / "demo"),
                 "--quiet"]) == 0
    assert (tmp_path / "demo" / "output.mp4").is_file()


# --- their code, when present --------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """A paper-medium run pair of their code (realistic random weights, moderate outputs), converted
    by the CLI; their outputs on one random source/target pair."""
    if not oracle.available():
        pytest.skip(f"the authors' code is not in {oracle.REFERENCE}")
    root = tmp_path_factory.mktemp("full")
    base, enhancer = oracle.make_runs(root, moderate=30.0, batches=1)
    theirs = oracle.OfficialModel(base, enhancer)
    return convert(root, base=base, enhancer=enhancer), oracle.their_outputs(theirs, seed=100)


@pytest.mark.slow
@needs_reference
def test_full_size_parity(full_size):
    converted, theirs = full_size
    model, _ = load_model(converted)
    assert model.cfg.image_size == 256 and model.cfg.inf_max_channels == 256
    # The fine-tuning recipe's model block is the released (paper medium) model's.
    assert to_dict(load_train_config(FINETUNE, []).model) == read_checkpoint(converted)["model_config"]
    diffs = network_diffs(converted, theirs)
    assert max(diffs.values()) <= EXACT, diffs
    for backend in ("torch", "onnxruntime"):
        image, mask = avatar_diffs(model, theirs, backend)
        assert image <= FOLDED and mask <= FOLDED, (backend, image, mask)


@pytest.mark.slow
@needs_reference
def test_full_size_checkpoint_animates_a_video(full_size, sample_video, tmp_path):
    from bilayer.data.samples import SAMPLE_PHOTOS
    from bilayer.io.media import MediaReader

    converted, _ = full_size
    out = tmp_path / "out.mp4"
    assert main(["animate", "--checkpoint", str(converted), "--source", str(SAMPLE_PHOTOS["astronaut"].path),
                 "--driver", str(sample_video), "--out", str(out), "--max-frames", "3", "--quiet"]) == 0
    with MediaReader(out) as video:
        frames = [frame for _, _, frame in video.frames()]
    assert len(frames) == 3 and frames[0].shape == (256, 256, 3)


@pytest.mark.slow
@needs_reference
def test_rough_weights_stay_within_their_own_float_noise(tmp_path):
    """Without moderated outputs a random network warps a rough texture with saturated offsets, which
    amplifies float rounding: their code in another memory layout differs from itself. Unfolded we
    are still bit-exact; folded we stay within twice their own difference."""
    base, enhancer = oracle.make_runs(tmp_path, **oracle.TINY)
    theirs = oracle.OfficialModel(base, enhancer)
    data = oracle.random_inputs(theirs.args, 1, 7)
    reference = oracle.their_outputs(theirs, seed=7)
    theirs.runner.to(memory_format=torch.channels_last)
    noise = max_diff(theirs(data)["pred_enh_target_imgs"][:, 0], reference["enhanced_image"])
    converted = convert(tmp_path, base=base, enhancer=enhancer)
    assert max(network_diffs(converted, reference).values()) <= EXACT
    model, _ = load_model(converted)
    image, _ = avatar_diffs(model, reference)
    assert image <= 2 * noise + EXACT, (image, noise)
