"""Training-step speed and peak memory per stage, model size and precision (paper Sec. 3.5 setup).

    python benchmarks/train_step.py [--sizes small medium large] [--stages base updater]
        [--precisions fp32 bf16] [--image-size 128] [--batch-size 2] [--steps 3] [--warmup 1]
        [--device auto] [--json FILE]
    python benchmarks/train_step.py --compare-steps 100 [--compare-config configs/demo.yaml]
        [--compare-image-size 64] [--stages base updater] [--precisions fp32 bf16] [--json FILE]

Every (size, stage, precision) runs in a fresh process, so its peak memory is its own: the full
training step of `bilayer.training.loop.Trainer.step` (generator phase + discriminator phase,
forward, backward, Adam; bf16 / fp16 under autocast, `TrainConfig.precision`) with the paper's
networks for that size, the default loss terms and perceptual nets (dlib face ResNet; the ImageNet
VGG19 needs user weights, `--imagenet-weights`), on random inputs of real shapes (no data
loading). Precisions default to fp32 and bf16 on CPU, and fp16 too on CUDA. Peak memory: resident
set size of the process on CPU, `torch.cuda.max_memory_allocated` on a GPU. Time: the mean of the
timed steps (each one's in the JSON: on a shared machine a disturbed step shows). Prints the CPU and
whether it computes bfloat16 natively (AMX, AVX512-BF16), and a table; `--json` also writes the
rows (a list, one object per row).

`--compare-steps N` runs the side-by-side comparison instead: one process trains the networks of
`--compare-config` (at `--compare-image-size`) for N steps of each stage from the SAME initial
weights on the SAME random batches once per precision, and prints the per-step generator and
discriminator loss totals, whether all are finite, and the relative difference from the first
precision (fp32) of the first step's totals (same weights, same batch) and of their means over the
last quarter of the steps; `--json` writes that record (an object).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch

from bilayer.data.frame import Pair
from bilayer.hardware import cpu_info, native_bf16
from bilayer.training.config import TrainConfig, load_train_config, train_config
from bilayer.training.data import random_pair
from bilayer.training.loop import Trainer

TOTALS = ("G/total", "D/total")


def machine() -> dict[str, Any]:
    """The CPU's name and speed flags, and what computes bfloat16 natively on it (None: nothing)."""
    return {**cpu_info(), "native_bf16": native_bf16(torch.device("cpu"))}


def describe_cpu(cpu: dict[str, Any]) -> str:
    return f"CPU: {cpu['name']} ({', '.join(cpu['flags'])}); native bf16: {cpu['native_bf16'] or 'no'}"


def new_trainer(cfg: TrainConfig) -> Trainer:
    """A trainer without data or run folder (its steps are driven by the caller)."""
    with tempfile.TemporaryDirectory() as run_dir:
        return Trainer(cfg, None, run_dir)


def measure(size: str, stage: str, precision: str, image_size: int, batch: int, steps: int, warmup: int,
            device: str, imagenet_weights: str | None) -> dict:
    perceptual = {"imagenet": "vgg19", "imagenet_weights": imagenet_weights} if imagenet_weights else {}
    cfg = train_config({"model_size": size, "model": {"image_size": image_size}, "device": device,
                        "perceptual": perceptual, "precision": precision})
    trainer = new_trainer(cfg)
    dev = trainer.device
    source, target = random_pair(cfg.model, batch, torch.Generator().manual_seed(0)).to(dev)
    phases = trainer.prepare(stage)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup):
        trainer.step(phases, source, target, i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_s = []
    for i in range(steps):
        start = time.perf_counter()
        trainer.step(phases, source, target, warmup + i)
        sync()
        step_s.append(time.perf_counter() - start)
    seconds = sum(step_s) / steps
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        device_name = torch.cuda.get_device_name(dev)
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    trained = trainer.nets["generators" if stage == "base" else "updater"] + trainer.nets["discriminator"]
    return {
        "size": size, "stage": stage, "precision": precision, "image_size": image_size, "batch_size": batch,
        "device": device_name, "cpu": machine(),
        "it_per_s": 1 / seconds, "s_per_it": seconds, "ms_per_it": 1000 * seconds,
        "step_ms": [1000 * t for t in step_s], "peak_memory_mb": peak_mb,
        "trained_params": sum(p.numel() for net in trained for p in net.parameters()),
        "perceptual": trainer.perceptual,
    }


def same_start(cfg: TrainConfig, precisions: list[str]) -> dict[str, Trainer]:
    """One trainer per precision, all with the first one's initial weights (avatar networks and D)."""
    trainers = {p: new_trainer(replace(cfg, precision=p)) for p in precisions}
    first, *others = trainers.values()
    for trainer in others:
        trainer.model.load_state_dict(first.model.state_dict())
        trainer.discriminator.load_state_dict(first.discriminator.state_dict())
    return trainers


def train_totals(trainer: Trainer, stage: str, batches: list[Pair]) -> dict[str, Any]:
    """One step of `stage` per batch: {"G/total": [...], "D/total": [...], "s_per_it": seconds}."""
    phases = trainer.prepare(stage)
    totals: dict[str, Any] = {k: [] for k in TOTALS}
    start = time.perf_counter()
    for i, pair in enumerate(batches):
        values, _ = trainer.step(phases, *pair.to(trainer.device), i)
        for k in TOTALS:
            totals[k].append(values[k])
    totals["s_per_it"] = (time.perf_counter() - start) / len(batches)
    return totals


def relative(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def compare(config: str, image_size: int, stages: list[str], precisions: list[str], steps: int,
            device: str) -> dict:
    """The side-by-side run of the module docstring, as a JSON-able record."""
    cfg = load_train_config(config, [f"model.image_size={image_size}", f"device={device}"])
    tail = max(1, steps // 4)
    record: dict[str, Any] = {"config": config, "image_size": image_size, "steps": steps, "tail_steps": tail,
                              "cpu": machine(), "stages": {}}
    for stage in stages:
        g = torch.Generator().manual_seed(cfg.seed)
        batches = [random_pair(cfg.model, getattr(cfg, stage).batch_size, g) for _ in range(steps)]
        runs = {}
        for precision, trainer in same_start(cfg, precisions).items():
            runs[precision] = train_totals(trainer, stage, batches)
            print(f"  {stage}/{precision}: {runs[precision]['s_per_it']:.3f} s/it", file=sys.stderr)
        ref = runs[precisions[0]]
        for run in runs.values():
            run["finite"] = all(math.isfinite(v) for k in TOTALS for v in run[k])
            run["tail_mean"] = {k: sum(run[k][-tail:]) / tail for k in TOTALS}
            run["first_step_rel_diff"] = {k: relative(run[k][0], ref[k][0]) for k in TOTALS}
            run["tail_mean_rel_diff"] = {k: relative(run["tail_mean"][k], ref["tail_mean"][k]) for k in TOTALS}
        record["stages"][stage] = runs
    return record


def print_compare(record: dict, precisions: list[str]) -> None:
    print(describe_cpu(record["cpu"]))
    print(f"Side by side: {record['config']} at {record['image_size']}px, {record['steps']} steps per stage, "
          f"same initial weights and random batches")
    for stage, runs in record["stages"].items():
        print(f"{stage}: step " + " ".join(f"{p + ' ' + k:>16}" for p in precisions for k in TOTALS))
        for i in range(record["steps"]):
            print(f"{'':{len(stage)}}  {i + 1:4d} " + " ".join(f"{runs[p][k][i]:16.4f}" for p in precisions for k in TOTALS))
        ref, *others = precisions
        print(f"  {ref}: {runs[ref]['s_per_it']:.3f} s/it, all finite: {runs[ref]['finite']}")
        for p in others:
            r = runs[p]
            diffs = ", ".join(f"{k} first step {r['first_step_rel_diff'][k]:.2%}, last {record['tail_steps']} "
                              f"mean {r['tail_mean'][k]:.4f} ({r['tail_mean_rel_diff'][k]:.2%})" for k in TOTALS)
            print(f"  {p}: {r['s_per_it']:.3f} s/it ({runs[ref]['s_per_it'] / r['s_per_it']:.2f}x {ref}), "
                  f"all finite: {r['finite']}; vs {ref}: {diffs}")


def measure_all(args: argparse.Namespace) -> list[dict]:
    """One fresh process per (size, stage, precision) row."""
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            for precision in args.precisions:
                cmd = [sys.executable, __file__, "--one", size, stage, precision, "--image-size", str(args.image_size),
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--device", args.device]
                if args.imagenet_weights:
                    cmd += ["--imagenet-weights", args.imagenet_weights]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{size}/{stage}/{precision} failed:\n{out.stderr[-2000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {size}/{stage}/{precision}: {rows[-1]['ms_per_it']:.0f} ms/it", file=sys.stderr)
    return rows


def print_rows(rows: list[dict]) -> None:
    first = rows[0]
    print(describe_cpu(first["cpu"]))
    print(f"Training step at {first['image_size']}x{first['image_size']}, batch {first['batch_size']} per process, "
          f"{first['device']}; ImageNet term: {first['perceptual']['imagenet']}")
    print(f"{'size':8} {'stage':8} {'precision':9} {'ms/it':>8} {'it/s':>7} {'x fp32':>7} {'peak MiB':>9} "
          f"{'trained params':>15}")
    fp32 = {(r["size"], r["stage"]): r["s_per_it"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        base = fp32.get((r["size"], r["stage"]))
        speedup = f"{base / r['s_per_it']:7.2f}" if base else f"{'-':>7}"
        print(f"{r['size']:8} {r['stage']:8} {r['precision']:9} {r['ms_per_it']:8.0f} {r['it_per_s']:7.3f} {speedup} "
              f"{r['peak_memory_mb']:9.0f} {r['trained_params']:15,d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--stages", nargs="+", default=["base", "updater"], choices=["base", "updater"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                   help="default: fp32 bf16 on CPU, fp32 bf16 fp16 on CUDA")
    p.add_argument("--image-size", type=int, default=128, help="256 is the paper's; 128 keeps a CPU run short")
    p.add_argument("--batch-size", type=int, default=2, help="per process (the paper: 48 / 32 over 8 GPUs)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--imagenet-weights", help="torchvision vgg19-dcbb9e9d.pth to include the Eq. 4 term")
    p.add_argument("--compare-steps", type=int, default=0, metavar="N",
                   help="run the side-by-side loss comparison of N steps per stage instead of the timings")
    p.add_argument("--compare-config", default="configs/demo.yaml", help="training config of the comparison")
    p.add_argument("--compare-image-size", type=int, default=64, help="image size of the comparison")
    p.add_argument("--json", metavar="FILE", help="also write the rows (or the comparison) as JSON")
    p.add_argument("--one", nargs=3, metavar=("SIZE", "STAGE", "PRECISION"), help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args()

    if args.one:
        print(json.dumps(measure(*args.one, args.image_size, args.batch_size, args.steps, args.warmup, args.device,
                                 args.imagenet_weights)))
        return
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.precisions = args.precisions or ["fp32", "bf16", "fp16"][: 3 if cuda else 2]
    if args.compare_steps:
        result: Any = compare(args.compare_config, args.compare_image_size, args.stages, args.precisions,
                              args.compare_steps, args.device)
        print_compare(result, args.precisions)
    else:
        result = measure_all(args)
        print_rows(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
