"""`bilayer export`: the per-frame network as ONNX, for one avatar or generic (App. A.3)."""
from __future__ import annotations

import argparse

from bilayer.runtime.choices import INIT_PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the per-frame network to ONNX (parity-checked with ONNX Runtime)")
    p.add_argument("--checkpoint", metavar="C", help="model checkpoint (default: the shipped demo model)")
    p.add_argument("--source", metavar="PHOTO", help="the avatar's photo (its adaptive parameters are folded in)")
    p.add_argument("--out", required=True, metavar="OUT.onnx")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute, float32 inputs/outputs")
    p.add_argument("--texture-input", action="store_true",
                   help="texture as a second input instead of a baked constant (written to OUT.npz; "
                        "not with --generic, whose texture is always an input)")
    p.add_argument("--precision", choices=INIT_PRECISIONS, default="auto",
                   help="of the avatar's initialization (auto: bf16 where the CPU has it natively, fp32 elsewhere); "
                        "the graph computes in fp32, or fp16 with --fp16")
    p.add_argument("--generic", action="store_true",
                   help="one graph for every avatar: texture and adaptive parameters are inputs "
                        "(with --source, that avatar's tensors are written to OUT.npz)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilayer.export.onnx import export

    r = export(args.checkpoint, args.out, args.source, args.generic, args.fp16, args.texture_input, args.precision)
    print(f"{r.path}: ONNX Runtime vs PyTorch: {r.parity}" + (f"; inputs in {r.sidecar}" if r.sidecar else "")
          + f"; initialization: {r.initialization}")
    return 0
