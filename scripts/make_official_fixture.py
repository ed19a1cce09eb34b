"""Write tests/fixtures/official/: a reduced released-format run pair and their code's outputs.

    python scripts/make_official_fixture.py [--out tests/fixtures/official]

Needs the authors' code in ../shared/reference/bilayer-model (tests/official_oracle.py builds
their networks from it). Writes:

    base/args.txt, base/checkpoints/2_<net>.pth          their base run (4 networks + discriminator)
    enhancer/args.txt, enhancer/checkpoints/1_<net>.pth  their enhancer run (+ its discriminator)
    outputs.pt   inputs and their outputs of two source/target pairs: embeddings, texture,
                 enhanced texture, LF, sampling grid, mask, base and enhanced images,
                 discriminator scores and features
    stickmen.npz their landmark images (uint8) of random keypoints at 64 and 256 px

The networks are 64 px and narrow (`official_oracle.TINY`), with realistic random weights
(`official_oracle.calibrate`, moderate outputs), so the files stay small and CI needs no reference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import official_oracle as oracle  # noqa: E402

#: Factor of `official_oracle.moderate_outputs`: warp offsets within about +-0.2.
MODERATE = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/official")
    args = parser.parse_args()
    if not oracle.available():
        raise SystemExit(f"{oracle.REFERENCE}: the authors' code is not there")
    base, enhancer = oracle.make_runs(args.out, seed=0, moderate=MODERATE, **oracle.TINY)
    model = oracle.OfficialModel(base, enhancer)
    rng = np.random.default_rng(0)
    keypoints = (rng.random((6, 68, 2)) * 2.2 - 1.1).astype(np.float32)  # some outside [-1, 1]
    stickmen = {size: oracle.stickmen_uint8(argparse.Namespace(**{**vars(model.args), "image_size": size}), keypoints)
                for size in (64, 256)}
    torch.save({"pairs": [oracle.their_outputs(model, seed) for seed in (100, 101)], "moderate": MODERATE},
               args.out / "outputs.pt")
    np.savez_compressed(args.out / "stickmen.npz", keypoints=keypoints, **{f"size{s}": v for s, v in stickmen.items()})
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: runs and outputs, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
