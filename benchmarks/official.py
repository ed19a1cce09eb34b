"""The authors' weights through our runtime against their own code, measured side by side.

    python benchmarks/official.py [--json OUT.json] [--frames 100] [--their-frames 5]

Needs their code in ../shared/reference/bilayer-model. A paper-medium released-format run pair
(base + texture enhancer) with realistic random weights is built from it (tests/official_oracle.py;
speed does not depend on the weights), converted with `bilayer convert official`, and then, on
this machine, in this one process:

* parity: max |ours - theirs| per network (our modules, unfolded) and of the image and mask that
  `Avatar` renders (folded per-frame network: torch/fp32 and onnxruntime/fp32), for weights with
  moderate outputs and for rough ones; for the rough ones also their code against itself in
  channels-last memory (the float noise such weights amplify);
* their time per frame: one call of their runner (eval mode, spectral norm removed) with one
  target, as their InferenceWrapper does per frame: every network runs again, the enhancer too;
* our init (`Avatar.initialize`: embedder, adaptive parameters, texture, 4 updater steps,
  folding, backend preparation) and time per frame, per backend/precision (auto: the default).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime import gemm_peak, median_ms  # noqa: E402
from bilayer.checkpoint import load_model  # noqa: E402
from bilayer.convert.official import convert  # noqa: E402
from bilayer.hardware import cpu_info  # noqa: E402
from bilayer.runtime import Avatar  # noqa: E402
from tests import official_oracle as oracle  # noqa: E402
from tests.official_oracle import avatar_diffs, network_diffs  # noqa: E402

CPU = torch.device("cpu")


def parity(root: Path, moderate: float | None) -> tuple[dict, Path, oracle.OfficialModel, dict]:
    """Build, convert and compare one run pair; returns (max diffs, checkpoint, their model, their outputs)."""
    base, enhancer = oracle.make_runs(root, moderate=moderate, batches=1)
    checkpoint = convert(base, root / "official.pt", enhancer).path
    theirs = oracle.OfficialModel(base, enhancer)
    outputs = oracle.their_outputs(theirs, seed=100)
    model, _ = load_model(checkpoint)
    diffs = network_diffs(checkpoint, outputs)
    for backend in ("torch", "onnxruntime"):
        diffs[f"avatar_{backend}_image"], diffs[f"avatar_{backend}_mask"] = avatar_diffs(model, outputs, backend)
    return diffs, checkpoint, theirs, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--frames", type=int, default=100, help="our frames per backend (median)")
    p.add_argument("--their-frames", type=int, default=5, help="calls of their runner (median)")
    args = p.parse_args()
    if not oracle.available():
        raise SystemExit(f"{oracle.REFERENCE}: the authors' code is not there")
    warnings.simplefilter("ignore")  # their grid_sample / meshgrid deprecation warnings
    peak = gemm_peak(torch.float32, CPU)
    cpu = cpu_info()
    print(f"{cpu['name']} ({', '.join(cpu['flags'])}), {torch.get_num_threads()} threads, GEMM peak fp32 "
          f"{peak:.0f} GFLOP/s; paper medium, 256x256, batch 1")
    report: dict = {"cpu": cpu, "threads": torch.get_num_threads(), "gemm_gflops_fp32": peak}

    with tempfile.TemporaryDirectory() as tmp:
        rough, _, theirs_rough, outputs_rough = parity(Path(tmp) / "rough", None)
        data = oracle.random_inputs(theirs_rough.args, 1, 100)
        theirs_rough.runner.to(memory_format=torch.channels_last)
        rough["their_channels_last_image"] = float(
            (theirs_rough(data)["pred_enh_target_imgs"][:, 0] - outputs_rough["enhanced_image"]).abs().max())
        moderate, checkpoint, theirs, outputs = parity(Path(tmp) / "moderate", 30.0)
        report["parity"] = {"moderate": moderate, "rough": rough}
        print(f"{'max |ours - theirs|':28s} {'moderate outputs':>17s} {'rough weights':>14s}")
        for key in moderate:
            print(f"  {key:26s} {moderate[key]:17.1e} {rough[key]:14.1e}")
        print(f"  {'their code, channels-last':26s} {'':17s} {rough['their_channels_last_image']:14.1e}")

        data = oracle.random_inputs(theirs.args, 1, 100)
        their_ms = median_ms(lambda: theirs(data), args.their_frames, 1, CPU)
        report["theirs_frame_ms"] = their_ms
        print(f"{'time per frame':28s} {'init ms':>10s} {'frame ms':>10s} {'vs theirs':>10s}")
        print(f"  {'their runner (all nets)':26s} {'-':>10s} {their_ms:10.1f} {1:9.1f}x")
        model, _ = load_model(checkpoint)
        source, target = oracle.frames(outputs)
        report["ours"] = {}
        for name in ("torch/auto", "torch/fp32", "torch/bf16", "onnxruntime/fp32"):
            backend, precision = name.split("/")
            avatar = Avatar(model, backend, precision)

            def init() -> None:
                avatar.initialize(source)

            init_ms = median_ms(init, 2, 1, CPU)
            frame_ms = median_ms(lambda: avatar.render(target.keypoints), args.frames, 10, CPU)
            report["ours"][name] = {"precision": avatar.precision, "init_ms": init_ms, "frame_ms": frame_ms,
                                    "init_stages_ms": avatar.init_stages_ms}
            print(f"  {'ours ' + name:26s} {init_ms:10.0f} {frame_ms:10.1f} {their_ms / frame_ms:9.0f}x"
                  + (f"   ({avatar.precision}: {avatar.precision_note})" if precision == "auto" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
