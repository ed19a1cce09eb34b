"""`bilayer bench macs`: per-frame GMACs and parameter counts of each model size (paper Table 2)."""
from __future__ import annotations

import argparse
import json

SIZES = ("small", "medium", "large")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="complexity benchmarks")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    macs = what.add_parser("macs", help="per-frame GMACs of the inference path for each model size")
    macs.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    macs.add_argument("--image-size", type=int, default=256)
    macs.set_defaults(func=run_macs)


def macs_table(image_size: int = 256) -> dict[str, dict]:
    """{size: {gmacs, params, paper_gmacs, all_params}} for the paper's three sizes."""
    from bilayer.config import PAPER_GMACS, model_config
    from bilayer.metrics.complexity import frame_macs
    from bilayer.nets import BilayerModel

    table = {}
    for size in SIZES:
        model = BilayerModel(model_config(size, image_size=image_size))
        r = frame_macs(model.cfg, model)
        table[size] = {
            "gmacs": r["macs"] / 1e9,
            "params": r["params"],
            "paper_gmacs": PAPER_GMACS[size],
            "all_params": sum(p.numel() for p in model.parameters()),
        }
    return table


def run_macs(args: argparse.Namespace) -> int:
    table = macs_table(args.image_size)
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"Per-frame cost of the inference path at {args.image_size}x{args.image_size}, batch 1")
    print(f"{'size':8} {'GMACs':>8} {'paper':>7} {'diff':>7} {'per-frame params':>17} {'all params':>12}")
    for size, r in table.items():
        diff = 100 * (r["gmacs"] / r["paper_gmacs"] - 1)
        print(f"{size:8} {r['gmacs']:8.3f} {r['paper_gmacs']:7.2f} {diff:+6.1f}% {r['params']:17,d} {r['all_params']:12,d}")
    print("per-frame params: inference generator with its per-avatar adaptive parameters folded in;")
    print("all params: the five trainable networks (E, G_tex with projectors, G, G_upd, D).")
    return 0
