"""`bilayer convert official --base RUN_DIR [--enhancer RUN_DIR] --out OUT.pt`: released weights as a checkpoint.

The authors' runs (saic-violet/bilayer-model: RUN_DIR/args.txt + RUN_DIR/checkpoints/<epoch>_<net>.pth)
become one bilayer checkpoint that works wherever --checkpoint is accepted (docs/official_weights.md).
Exit codes: 0 written, 2 a bad run folder or an unsupported option (nothing written).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert other implementations' weights into a bilayer checkpoint",
                       description=__doc__.splitlines()[0])
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    o = sources.add_parser("official", help="the authors' released runs (base model and texture enhancer)",
                           description=__doc__.splitlines()[0])
    o.add_argument("--base", required=True, metavar="RUN_DIR", help="the base model's run folder")
    o.add_argument("--enhancer", metavar="RUN_DIR",
                   help="the texture enhancer's run folder (without it the model has no updater steps)")
    o.add_argument("--epoch", type=int, metavar="N", help="epoch of the base run (default: its latest)")
    o.add_argument("--enhancer-epoch", type=int, metavar="N", help="epoch of the enhancer run (default: its latest)")
    o.add_argument("--align-corners", action="store_true",
                   help="sample the texture with align_corners=True (how torch < 1.3 ran their grid_sample)")
    o.add_argument("--out", required=True, metavar="OUT.pt", help="the checkpoint to write")
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilayer.convert.official import convert

    r = convert(args.base, args.out, args.enhancer, args.epoch, args.enhancer_epoch, args.align_corners)
    steps = r.cfg.upd_steps if "updater" in r.networks else 0
    print(f"{r.path}: {', '.join(r.networks)} from {len(r.sources)} files ({r.cfg.image_size} px, "
          f"{steps} updater steps, preprocessing {r.cfg.preprocessing})")
    return 0
