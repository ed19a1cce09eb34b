"""`bilayer train --config FILE --data DIR --out RUN_DIR [--resume | --weights C] [KEY=VALUE ...]`: both stages.

Writes RUN_DIR/config.yaml (resolved), RUN_DIR/tb/ (TensorBoard), RUN_DIR/log.jsonl and
RUN_DIR/checkpoints/{last,base,final}.pt. Works under `torchrun --nproc_per_node N -m bilayer train`.
Exit codes: 0 finished (or stopped by --stop-after), 1 a loss became NaN/Inf, 2 bad input,
130 stopped by SIGINT/SIGTERM (last.pt saved; continue with --resume).
"""
from __future__ import annotations

import argparse
import sys

EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 130


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the bi-layer model: base stage, then the texture updater",
                       description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, metavar="FILE", help="training config YAML (e.g. configs/tiny.yaml)")
    p.add_argument("--data", metavar="DIR", help="dataset folder written by `bilayer preprocess`")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (checkpoints/, tb/, log.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    p.add_argument("--weights", metavar="CHECKPOINT",
                   help="start a new run from the networks of this checkpoint (fine-tuning; e.g. the demo model)")
    p.add_argument("--stop-after", type=int, metavar="N", help="save and stop after N iterations (resume later)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. base.iterations=10")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from bilayer.config import to_dict
    from bilayer.errors import InputError
    from bilayer.io.files import check_output_folder
    from bilayer.training import distributed
    from bilayer.training.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if not args.data or not args.out:
        raise InputError("--data and --out are required (unless --dry-run)")
    check_output_folder(args.out)
    if args.stop_after is not None and args.stop_after < 1:
        raise InputError(f"--stop-after must be >= 1, got {args.stop_after}")

    from bilayer.training.data import open_dataset
    from bilayer.training.loop import Trainer, TrainingDiverged

    try:
        trainer = Trainer(cfg, open_dataset(args.data, cfg), args.out, resume=args.resume, weights_from=args.weights)
        trainer.run(args.stop_after)
    except TrainingDiverged as e:
        print(f"bilayer train: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        distributed.shutdown()
    return EXIT_INTERRUPTED if trainer.signalled else 0
