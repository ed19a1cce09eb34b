"""Checkpoints: inference checkpoints (avatar networks only, float16 weights) load and render alike."""
from __future__ import annotations

import pytest
import torch

from bilayer.checkpoint import inference_checkpoint, load_model, read_checkpoint, save_checkpoint
from bilayer.data.frame import Frame
from bilayer.errors import InputError
from bilayer.nets import NETWORKS, BilayerModel, Discriminator
from tests.nets_helpers import dummy_batch, tiny_config


@pytest.fixture
def trained_like(tmp_path):
    """A full checkpoint of a tiny model whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(0)
    cfg = tiny_config("small")
    model = BilayerModel(cfg)
    x = dummy_batch(cfg, b=4)
    with torch.no_grad():  # one train-mode pass moves every running statistic
        model.render(x.keypoints, model.initialize(x.image, x.landmark_image, x.mask))
    path = tmp_path / "full.pt"
    save_checkpoint(path, model, {"stage": "final"}, Discriminator(cfg))
    return path, x


def _render(model: BilayerModel, x: Frame) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        state = model.refine(model.initialize(x.image[:1], x.landmark_image[:1]), x.keypoints[:1], x.image[:1])
        return model.render(x.keypoints[1:2], state).image


def test_inference_checkpoint_is_smaller_and_renders_alike(trained_like, tmp_path):
    full, x = trained_like
    slim = inference_checkpoint(full, tmp_path / "slim.pt", meta={"card": "docs/demo_model.md"})
    ckpt = read_checkpoint(slim)
    assert {k.split(".")[0] for k in ckpt["model"]} == set(NETWORKS) and "discriminator" not in ckpt
    assert ckpt["meta"]["stage"] == "final" and ckpt["meta"]["card"] == "docs/demo_model.md"
    assert ckpt["meta"]["weights_dtype"] == "float16"
    assert any(v.dtype == torch.float16 for v in ckpt["model"].values())
    assert all(v.dtype != torch.float16 for k, v in ckpt["model"].items() if "running_" in k)
    assert slim.stat().st_size < 0.6 * full.stat().st_size  # no discriminator, half the bytes per weight

    reference, restored = _render(load_model(full)[0], x), _render(load_model(slim)[0], x)
    assert (reference - restored).abs().max() < 2e-2  # float16 weights
    exact = inference_checkpoint(full, tmp_path / "slim32.pt", half=False)
    assert torch.equal(_render(load_model(exact)[0], x), reference)


def test_inference_checkpoint_missing_a_network_key_is_one_line(trained_like, tmp_path):
    full, _ = trained_like
    slim = inference_checkpoint(full, tmp_path / "slim.pt")
    ckpt = read_checkpoint(slim)
    key = next(k for k in ckpt["model"] if k.startswith("inference_generator."))
    del ckpt["model"][key]
    torch.save(ckpt, slim)
    with pytest.raises(InputError, match=f"{slim}: weights do not match.*missing key '{key}'"):
        load_model(slim)


@pytest.mark.parametrize("meta, steps", [
    ({"stage": "base", "iteration": 1200}, 0),  # a mid-training checkpoint: G_upd untrained
    ({"stage": "updater", "iteration": 0}, 0),  # base.pt, written as the updater stage starts
    ({"stage": "updater", "iteration": 300}, 4),
    ({}, 4),  # no training metadata: the config's M
])
def test_checkpoints_before_the_updater_stage_render_without_updater_steps(tmp_path, meta, steps):
    cfg = tiny_config("small")
    assert cfg.upd_steps == 4
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, BilayerModel(cfg), meta)
    model, ckpt = load_model(path)
    assert model.cfg.upd_steps == steps and ckpt["model_config"]["upd_steps"] == 4


def _as_version_1(path, out) -> None:
    """`path` rewritten the way version 1 wrote checkpoints: the discriminator inside "model",
    a run's starting weights in meta["init"]."""
    ckpt = torch.load(path, weights_only=True)
    model = {**ckpt["model"], **{f"discriminator.{k}": v for k, v in ckpt.pop("discriminator").items()}}
    meta = {**ckpt["meta"], "init": {"checkpoint": "a.pt", "networks": ["embedder"], "updater_trained": False}}
    torch.save({**ckpt, "version": 1, "model": model, "meta": meta}, out)


def test_version_1_checkpoints_are_migrated_when_read(trained_like, tmp_path):
    full, x = trained_like
    old = tmp_path / "v1.pt"
    _as_version_1(full, old)
    ckpt, current = read_checkpoint(old), read_checkpoint(full)
    assert ckpt["version"] == 2 and ckpt["model"].keys() == current["model"].keys()
    assert all(torch.equal(ckpt["discriminator"][k], v) for k, v in current["discriminator"].items())
    assert ckpt["meta"]["weights_from"]["checkpoint"] == "a.pt" and "init" not in ckpt["meta"]
    assert torch.equal(_render(load_model(old)[0], x), _render(load_model(full)[0], x))


def test_unknown_versions_are_one_line(trained_like, tmp_path):
    full, _ = trained_like
    for version in (3, 0, "2"):
        ckpt = torch.load(full, weights_only=True)
        torch.save({**ckpt, "version": version}, tmp_path / "v.pt")
        with pytest.raises(InputError, match=f"checkpoint version {version!r} is not supported"):
            read_checkpoint(tmp_path / "v.pt")

