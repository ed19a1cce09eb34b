"""`bilayer evaluate`: the paper's protocol on a dataset preprocessed from real sample videos, with a
tiny random model, its JSON/table/grid outputs and the copy-source baseline."""
from __future__ import annotations

import importlib.util
import json
import math

import cv2
import numpy as np
import pytest
import torch

from bilayer.checkpoint import load_model, save_checkpoint
from bilayer.cli.main import main
from bilayer.data.frame import Frame
from bilayer.evaluation.protocol import EvalConfig, Evaluation, evaluate, target_frames
from bilayer.metrics.complexity import frame_macs
from bilayer.nets import BilayerModel, apply_mask
from bilayer.runtime import Avatar
from tests.nets_helpers import tiny_config

REQUIRED = ("lpips", "ssim", "csim", "nme")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, BilayerModel(tiny_config()))
    return path


def test_targets_are_taken_at_one_fps():
    assert target_frames(np.arange(75), fps=25) == [25, 50]
    assert target_frames(np.arange(0, 75, 2), fps=25) == [13, 25]  # frame_step 2: source frames 26 and 50
    assert target_frames(np.r_[3:20, 30:80], fps=25) == [17, 40, 65]  # face lost 20..29: first frame after 1 s
    assert target_frames(np.r_[0:10, 70:80], fps=25) == [10, 15]  # 1 s and 2 s fall in a gap: 2.8 s, then 3 s
    assert target_frames(np.arange(20), fps=25) == [] and target_frames(np.zeros(1), fps=0) == []


def test_versus_copy_source_by_hand():
    """Paired differences, a clip's pairs one cluster; a pair one method could not score is left out."""
    t = torch.tensor
    ev = Evaluation(scores={"ours": {"m": [t([0.6, 0.8]), t([0.3, 0.5])]},
                            "copy_source": {"m": [t([0.5, 0.5]), t([0.5, float("nan")])]}})
    # differences: clip 1 (0.1, 0.3), clip 2 (-0.2); mean 0.2 / 3; residual sums per clip +-(0.4 / 1.5)
    mean, se = 0.2 / 3, math.sqrt(2 * (0.4 / 1.5) ** 2 * 2 / 1) / 3
    assert ev.versus_copy_source("m", True) == pytest.approx(
        {"difference": mean, "standard_error": se, "pairs_better": 2 / 3})
    assert ev.versus_copy_source("m", False)["pairs_better"] == pytest.approx(1 / 3)
    nan = Evaluation(scores={"ours": {"m": [t([float("nan")])]}, "copy_source": {"m": [t([0.5])]}})
    assert nan.versus_copy_source("m", True) is None


def test_clip_selection_first_clips_of_each_identity():
    from types import SimpleNamespace

    from bilayer.evaluation.protocol import select_clips

    def clip(identity, k, frames=100):
        return SimpleNamespace(clip_id=f"{identity}/{k}", identity=identity, num_frames=frames, fps=25.0)

    data = SimpleNamespace(clips=[clip("b", 2), clip("a", 1, frames=1), clip("b", 0), clip("a", 0), clip("b", 1),
                                  clip("a", 2)])
    assert [c.clip_id for c in select_clips(data, 50)] == ["a/0", "b/0"]  # the paper: one per identity
    assert [c.clip_id for c in select_clips(data, 50, per_identity=2)] == ["a/0", "a/2", "b/0", "b/1"]  # a/1: 1 frame
    assert [c.clip_id for c in select_clips(data, 3, per_identity=5)] == ["a/0", "a/2", "b/0"]


def _probe(checkpoint, dataset_dir, cfg: EvalConfig):
    """Evaluate with a metric that records what it is given: (model, evaluation, [(pred, target,
    target_keypoints)] per clip and method, ours first)."""
    model, _ = load_model(checkpoint)
    calls = []

    def recorder(pred, target, target_keypoints):
        calls.append((pred.clone(), target.clone(), target_keypoints.clone()))
        return torch.zeros(len(pred))

    return model, evaluate(model, dataset_dir, {"probe": recorder}, cfg), calls


def _source_and_first_target(dataset_dir, clip_id: str) -> tuple[Frame, Frame]:
    """The clip's stored source frame and its first 1 FPS target, as the dataset gives them."""
    from bilayer.data.config import DatasetConfig
    from bilayer.data.dataset import PairDataset
    from bilayer.data.store import ClipReader

    ds = PairDataset(dataset_dir, DatasetConfig(split="all"), image_size=64)
    clip = next(c for c in ds.clips if c.clip_id == clip_id)
    with ClipReader(dataset_dir / clip.file) as reader:
        i = target_frames(reader.array("frame_index"), clip.fps)[0]
    return ds.frame(clip, 0), ds.frame(clip, i)


def test_protocol_init_once_per_clip_and_copy_source_baseline(dataset_dir, checkpoint):
    _, ev, calls = _probe(checkpoint, dataset_dir, EvalConfig(split="all", mask="own"))
    # alice/interview.mp4 and bob/talk.mkv (2 s each -> one target at 1 s); bob's photo has no target
    assert len(ev.clips) == 2 and ev.n_pairs == 2
    assert len(ev.init_ms) == 2 and len(ev.inference_ms) == 2
    ours, copy = calls[0], calls[1]  # first clip: ours, then copy_source, on the same targets
    assert torch.equal(ours[1], copy[1]) and torch.equal(ours[2], copy[2])
    assert ours[0].shape == (1, 3, 64, 64) and not torch.equal(ours[0], copy[0])
    # the baseline's output is the clip's first frame, cut with its dataset mask
    src, _ = _source_and_first_target(dataset_dir, ev.clips[0])
    assert torch.allclose(copy[0][0], apply_mask(src.image, src.mask))
    assert ev.mean("ours", "probe") == 0.0 and ev.unscored("ours", "probe") == 0.0


def test_mask_threshold_cuts_every_mask(dataset_dir, checkpoint):
    model, ev, calls = _probe(checkpoint, dataset_dir, EvalConfig(split="all", mask="own", mask_threshold=0.5))
    src, tgt = _source_and_first_target(dataset_dir, ev.clips[0])
    assert ((src.mask > 0.01) & (src.mask < 0.99)).any()  # soft masks to cut
    avatar = Avatar(model, precision="fp32")  # as the evaluation
    avatar.initialize(src.batch())
    image, mask = avatar.render(tgt.keypoints[None])  # (1, 3, H, W), (1, 1, H, W)
    (ours, target), (copy, _) = [(pred[0], target[0]) for pred, target, _ in calls[:2]]  # (3, H, W) each
    assert torch.allclose(ours, apply_mask(image, (mask >= 0.5).float())[0], atol=1e-6)
    assert torch.equal(target, apply_mask(tgt.image, (tgt.mask >= 0.5).float()))
    assert torch.equal(copy, apply_mask(src.image, (src.mask >= 0.5).float()))
    with pytest.raises(ValueError, match="mask_threshold"):
        EvalConfig(mask_threshold=1.0)


@pytest.mark.parametrize("mode", ["target", "predicted"])
def test_mask_modes_cut_every_image_with_one_mask(dataset_dir, checkpoint, mode):
    """--mask target: output, copied source and target all cut with the target's dataset mask;
    --mask predicted (the official code): all with the predicted mask. mask_iou scores the
    silhouettes in every mode."""
    model, ev, calls = _probe(checkpoint, dataset_dir, EvalConfig(split="all", mask=mode))
    src, tgt = _source_and_first_target(dataset_dir, ev.clips[0])
    avatar = Avatar(model, precision="fp32")  # as the evaluation
    avatar.initialize(src.batch())
    image, mask = avatar.render(tgt.keypoints[None])  # (1, 3, H, W), (1, 1, H, W)
    cut = tgt.mask if mode == "target" else mask[0]
    (ours, target), (copy, copy_target) = [(pred[0], target[0]) for pred, target, _ in calls[:2]]
    assert torch.allclose(ours, apply_mask(image[0], cut), atol=1e-6)
    assert torch.allclose(copy, apply_mask(src.image, cut), atol=1e-6)
    assert torch.allclose(target, apply_mask(tgt.image, cut), atol=1e-6) and torch.equal(target, copy_target)
    from bilayer.metrics.silhouette import mask_iou

    assert ev.scores["ours"]["mask_iou"][0][0] == pytest.approx(float(mask_iou(mask, tgt.mask[None])[0]))
    assert ev.scores["copy_source"]["mask_iou"][0][0] == pytest.approx(
        float(mask_iou(src.mask[None], tgt.mask[None])[0]))
    with pytest.raises(ValueError, match="mask must be one of target, own, predicted"):
        EvalConfig(mask="both")


def test_cli_json_table_and_grid(dataset_dir, checkpoint, tmp_path, capsys):
    out, grid = tmp_path / "eval.json", tmp_path / "new" / "grid.png"  # missing folders are created
    out.write_text("an earlier result")
    earlier = out.stat().st_ino
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--split", "all",
                 "--json", str(out), "--grid", str(grid)])
    assert code == 0
    assert out.stat().st_ino != earlier  # written beside and renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "new"]  # no temporary file left
    results = json.loads(out.read_text())
    assert results["n_pairs"] == 2 and results["n_clips"] == 2
    for method in ("ours", "copy_source"):
        row = results[method]
        assert set(REQUIRED) <= set(row) and row["lpips"] is None
        assert 0 <= row["nme_no_face"] <= 1
    assert "vgg16-397923af.pth" in results["unavailable"]["lpips"]
    copy = results["copy_source"]
    assert 0 < copy["ssim"] < 1 and 0 < copy["csim"] < 1 and copy["nme"] > 0  # the head moves in 1 s
    ours = results["ours"]
    assert 0 <= ours["csim"] <= 1 and ours["ssim"] < copy["ssim"]  # a random model is worse than copying
    assert 0 < results["background_windows"] < 1
    for row in (ours, copy):  # the SSIM split into the target's background windows and the rest
        assert row["ssim_foreground"] < 1 and row["ssim_background"] <= 1
    assert copy["ssim_background"] > ours["ssim_background"]  # black where the source's true mask is 0
    model, _ = load_model(checkpoint)
    assert ours["gmacs"] == pytest.approx(frame_macs(model.cfg, model)["macs"] / 1e9)
    assert ours["init_ms"] > 0 and ours["inference_ms"] > 0

    chosen, table = capsys.readouterr().out.split("\n", 1)
    assert chosen == "evaluate: split 'all' (--split)"
    header = table.splitlines()[0].split()
    assert header == ["Method", "LPIPS↓", "SSIM↑", "CSIM↑", "NME↓", "GMACs↓", "Init.(ms)↓", "Inf.(ms)↓"]
    assert "Copy source" in table and "ArcFace" in table and "LPIPS: n/a" in table and "SSIM by region" in table
    assert results["mask_threshold"] is None and "Images: foreground only (target masks)" in table
    assert "cut into 0/1" not in table and results["mask"] == "target"
    assert 0 <= ours["mask_iou"] <= 1 and 0 < copy["mask_iou"] <= 1 and "Silhouette (mask IoU" in table
    versus = results["versus_copy_source"]
    assert sorted(versus) == ["csim", "nme", "ssim"] and versus["ssim"]["pairs_better"] == 0.0
    assert versus["ssim"]["difference"] == pytest.approx(ours["ssim"] - copy["ssim"])
    assert f"SSIM {versus['ssim']['difference']:+.3f} ± {versus['ssim']['standard_error']:.3f} (0%)" in table

    image = cv2.imread(str(grid))
    assert image.shape == (24 + 2 * 64, 3 * 64, 3)  # header + one row per clip; source | target | ours


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                    reason="the lpips package is not installed (pip install --no-deps lpips==0.1.4)")
def test_cli_lpips_with_a_user_backbone(dataset_dir, checkpoint, tmp_path):
    from bilayer.metrics.lpips import BACKBONES

    features, _, _ = BACKBONES["alex"]()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "alexnet.pth")
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--split", "all",
                 "--metrics", "lpips,ssim", "--lpips-net", "alex", "--lpips-backbone", str(tmp_path / "alexnet.pth"),
                 "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["ours"]["lpips"] > 0 and results["copy_source"]["lpips"] > 0
    assert results["unavailable"] == {} and results["ours"]["csim"] is None  # not asked for


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/nowhere"], "not a dataset"),
    (["--data", "{data}", "--metrics", "fid"], "unknown 'fid'"),
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt"], "checkpoint not found"),
    (["--data", "{data}", "--mask-threshold", "1.5"], "--mask-threshold: mask_threshold must be in (0, 1)"),
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt", "--mask-threshold", "0"], "--mask-threshold"),  # first
    # output paths and --test-fraction are checked before the checkpoint is loaded
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt", "--grid", "{tmp}/grid.txt"],
     "grid.txt: output must end in .png"),
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt", "--json", "{tmp}"], "is a folder, not a file name"),
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt", "--json", "{data}/manifest.jsonl/r.json"],
     "manifest.jsonl: not a folder"),
    (["--data", "{data}", "--checkpoint", "{tmp}/missing.pt", "--test-fraction", "2"],
     "--test-fraction must be in [0, 1], got 2"),
])
def test_cli_errors_are_one_line(dataset_dir, checkpoint, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, data=dataset_dir) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("damage, message", [
    ("truncated_shards", "damaged clip file (File is not a zip file)"),
    ("bad_manifest_line", "manifest.jsonl: line 2 is not a valid ClipRecord (Expecting value)"),
    ("undecodable_frames", ": frame 0 cannot be decoded (damaged clip file)"),
])
def test_cli_damaged_dataset_is_one_line(dataset_dir, checkpoint, tmp_path, capsys, damage, message):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    if damage == "truncated_shards":
        for shard in (data / "shards").rglob("*.zip"):
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "undecodable_frames":  # a valid zip whose first frame is not a JPEG
        import zipfile

        for shard in (data / "shards").rglob("*.zip"):
            with zipfile.ZipFile(shard) as z:
                members = {name: z.read(name) for name in z.namelist()}
            members["frames/000000.jpg"] = b"not a jpeg"
            with zipfile.ZipFile(shard, "w") as z:
                for name, payload in members.items():
                    z.writestr(name, payload)
    else:
        lines = (data / "manifest.jsonl").read_text().splitlines(keepends=True)
        lines[1] = '{"clip_id": \n'
        (data / "manifest.jsonl").write_text("".join(lines))
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(data) in err and len(err.splitlines()) == 1, err


def test_the_split_is_chosen_for_the_checkpoint_and_the_data(dataset_dir, tmp_path):
    """The run's test split on the dataset it was trained on, every clip on any other; printed."""
    from bilayer.evaluation.protocol import evaluation_split

    trained = {"dataset": str(dataset_dir.resolve()), "train_config": {"data": {"split": "train", "test_fraction": 0.3}}}
    assert evaluation_split(trained, dataset_dir)[:2] == ("test", 0.3)
    assert evaluation_split(trained, tmp_path)[0] == "all"
    every = {**trained, "train_config": {"data": {"split": "all", "test_fraction": 0.3}}}
    assert evaluation_split(every, dataset_dir)[0] == "all"
    split, fraction, why = evaluation_split({}, dataset_dir)  # the shipped demo model records none
    assert (split, fraction) == ("all", 0.05) and "does not record" in why


def test_evaluate_on_ones_own_clips_needs_no_split(dataset_dir, checkpoint, capsys):
    """A user's own dataset (not the checkpoint's training data): every clip, said so."""
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--metrics", "ssim"]) == 0
    assert capsys.readouterr().out.startswith("evaluate: split 'all' (the checkpoint does not record its training data")

