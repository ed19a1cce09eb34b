"""Training-step speed and peak memory per stage and model size (paper Sec. 3.5 setup).

    python benchmarks/train_step.py [--sizes small medium large] [--stages base updater]
        [--image-size 128] [--batch-size 2] [--steps 3] [--warmup 1] [--device auto] [--json FILE]

Every (size, stage) runs in a fresh process, so its peak memory is its own: the full training step
of `bilayer.training.loop.Trainer.step` (generator phase + discriminator phase, forward, backward,
Adam) with the paper's networks for that size, the default loss terms and perceptual nets (dlib
face ResNet; the ImageNet VGG19 needs user weights, `--imagenet-weights`), on random inputs of
real shapes (no data loading). Peak memory: resident set size of the process on CPU,
`torch.cuda.max_memory_allocated` on a GPU. Prints a table; `--json` also writes the rows.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def measure(size: str, stage: str, image_size: int, batch: int, steps: int, warmup: int, device: str,
            imagenet_weights: str | None) -> dict:
    import torch

    from bilayer.losses import Frame
    from bilayer.training.config import train_config
    from bilayer.training.loop import Trainer

    perceptual = {"imagenet": "vgg19", "imagenet_weights": imagenet_weights} if imagenet_weights else {}
    cfg = train_config({"model_size": size, "model": {"image_size": image_size}, "device": device,
                        "perceptual": perceptual})
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, None, run_dir)
    dev = trainer.device
    g = torch.Generator().manual_seed(0)

    def frame() -> Frame:
        s, k = image_size, cfg.model.num_keypoints
        return Frame(
            image=(torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(dev),
            landmarks=(torch.rand(batch, 3, s, s, generator=g) * 2 - 1).to(dev),
            keypoints=(torch.rand(batch, k, 2, generator=g) * 1.2 - 0.6).to(dev),
            mask=(torch.rand(batch, 1, s, s, generator=g) > 0.5).float().to(dev),
        )

    source, target = frame(), frame()
    phases = trainer.prepare(stage)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(warmup):
        trainer.step(phases, source, target, i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        trainer.step(phases, source, target, warmup + i)
    sync()
    seconds = (time.perf_counter() - start) / steps
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        device_name = torch.cuda.get_device_name(dev)
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    trained = trainer.nets["generators" if stage == "base" else "updater"] + trainer.nets["discriminator"]
    return {
        "size": size, "stage": stage, "image_size": image_size, "batch_size": batch, "device": device_name,
        "it_per_s": 1 / seconds, "s_per_it": seconds, "peak_memory_mb": peak_mb,
        "trained_params": sum(p.numel() for net in trained for p in net.parameters()),
        "perceptual": trainer.perceptual,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--stages", nargs="+", default=["base", "updater"], choices=["base", "updater"])
    p.add_argument("--image-size", type=int, default=128, help="256 is the paper's; 128 keeps a CPU run short")
    p.add_argument("--batch-size", type=int, default=2, help="per process (the paper: 48 / 32 over 8 GPUs)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--imagenet-weights", help="torchvision vgg19-dcbb9e9d.pth to include the Eq. 4 term")
    p.add_argument("--json", metavar="FILE", help="also write the rows as a JSON list")
    p.add_argument("--one", nargs=2, metavar=("SIZE", "STAGE"), help=argparse.SUPPRESS)  # worker mode
    args = p.parse_args()

    common = (args.image_size, args.batch_size, args.steps, args.warmup, args.device, args.imagenet_weights)
    if args.one:
        print(json.dumps(measure(*args.one, *common)))
        return
    rows = []
    for size in args.sizes:
        for stage in args.stages:
            cmd = [sys.executable, __file__, "--one", size, stage, "--image-size", str(args.image_size),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device]
            if args.imagenet_weights:
                cmd += ["--imagenet-weights", args.imagenet_weights]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{size}/{stage} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {size}/{stage}: {r['s_per_it']:.2f} s/it", file=sys.stderr)

    first = rows[0]
    print(f"Training step at {first['image_size']}x{first['image_size']}, batch {first['batch_size']} per process, "
          f"{first['device']}; ImageNet term: {first['perceptual']['imagenet']}")
    print(f"{'size':8} {'stage':8} {'it/s':>8} {'s/it':>8} {'peak MiB':>9} {'trained params':>15}")
    for r in rows:
        print(f"{r['size']:8} {r['stage']:8} {r['it_per_s']:8.3f} {r['s_per_it']:8.2f} {r['peak_memory_mb']:9.0f} "
              f"{r['trained_params']:15,d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
