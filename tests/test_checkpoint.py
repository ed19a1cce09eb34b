"""Checkpoints: inference checkpoints (avatar networks only, float16 weights) load and render alike."""
from __future__ import annotations

import pytest
import torch

from bilayer.checkpoint import INFERENCE_NETWORKS, inference_checkpoint, load_model, read_checkpoint, save_checkpoint
from bilayer.errors import InputError
from bilayer.nets import BilayerModel
from tests.nets_helpers import dummy_batch, tiny_config


@pytest.fixture
def trained_like(tmp_path):
    """A full checkpoint of a tiny model whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(0)
    cfg = tiny_config("small")
    model = BilayerModel(cfg)
    x = dummy_batch(cfg, b=4)
    with torch.no_grad():  # one train-mode pass moves every running statistic
        model.render(x["keypoints"], model.initialize(x["image"], x["landmarks"], x["mask"]))
    path = tmp_path / "full.pt"
    save_checkpoint(path, model, {"stage": "final"})
    return path, x


def _render(model: BilayerModel, x: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        state = model.enhance(model.initialize(x["image"][:1], x["landmarks"][:1]), x["keypoints"][:1], x["image"][:1])
        return model.render(x["keypoints"][1:2], state).image


def test_inference_checkpoint_is_smaller_and_renders_alike(trained_like, tmp_path):
    full, x = trained_like
    slim = inference_checkpoint(full, tmp_path / "slim.pt", meta={"card": "docs/demo_model.md"})
    ckpt = read_checkpoint(slim)
    assert {k.split(".")[0] for k in ckpt["model"]} == set(INFERENCE_NETWORKS)
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
