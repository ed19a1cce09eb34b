"""The shipped demo model: present, small, an inference checkpoint, and the default of
`bilayer demo` and `bilayer evaluate` (docs/demo_model.md)."""
from __future__ import annotations

import json

import numpy as np

from bilayer.assets import DEMO_CHECKPOINT, DEMO_TRACK
from bilayer.checkpoint import read_checkpoint
from bilayer.cli.main import main
from bilayer.nets import NETWORKS


def test_demo_checkpoint_is_shipped_as_a_small_inference_checkpoint():
    assert DEMO_CHECKPOINT.is_file(), "make demo-model writes it (docs/demo_model.md)"
    assert DEMO_CHECKPOINT.stat().st_size <= 50 * 2**20
    ckpt = read_checkpoint(DEMO_CHECKPOINT)
    meta = ckpt["meta"]
    assert set(meta["networks"]) == set(NETWORKS) and meta["stage"] == "updater"
    assert meta["train_config"]["model"] == ckpt["model_config"]
    assert meta["recipe"] == "configs/demo.yaml" and meta["model_card"] == "docs/demo_model.md"


def test_demo_runs_with_no_arguments_but_the_output_folder(tmp_path, capsys):
    import av

    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    assert f"demo: {len(np.load(DEMO_TRACK))} frames" in capsys.readouterr().out
    with av.open(str(tmp_path / "output.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == len(np.load(DEMO_TRACK))
    assert np.std(frames[len(frames) // 2]) > 10  # an image, not a flat colour


def test_evaluate_defaults_to_the_demo_model(dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(dataset_dir), "--split", "all", "--metrics", "ssim", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["n_pairs"] >= 1 and 0 < results["ours"]["ssim"] <= 1
    assert results["checkpoint"] == str(DEMO_CHECKPOINT)
