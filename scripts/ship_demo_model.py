"""Turn a finished run of configs/demo.yaml into the shipped demo model (bilayer/assets/demo.pt).

    python scripts/ship_demo_model.py runs/demo/checkpoints/final.pt bilayer/assets/demo.pt

Keeps the avatar networks (embedder, texture generator, updater, inference generator) with
float16 weights and float32 statistics, drops the discriminator and all training state, and
records where the model card and the recipe are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bilayer.checkpoint import inference_checkpoint
from bilayer.errors import InputError

MAX_MB = 50  # the repository ships it without Git LFS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="inference checkpoint of the run (checkpoints/final.pt)")
    parser.add_argument("dst", type=Path, help="where the demo model goes")
    args = parser.parse_args(argv)
    try:
        out = inference_checkpoint(args.src, args.dst, half=True,
                                   meta={"model_card": "docs/demo_model.md", "recipe": "configs/demo.yaml"})
    except InputError as e:
        print(f"ship_demo_model: error: {e}", file=sys.stderr)
        return 2
    size = out.stat().st_size / 2**20
    print(f"{out}: {size:.1f} MiB")
    if size > MAX_MB:
        print(f"ship_demo_model: error: {out} is over {MAX_MB} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
