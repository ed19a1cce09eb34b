"""`bilayer evaluate --data DIR`: the paper's metrics on a preprocessed dataset (Sec. 4, Table 2).

First frame of each test clip (one per identity, at most --max-clips) is the source, targets are
taken at 1 FPS. Prints a Table 2 style table for the model and the copy-source baseline; writes
the numbers as JSON (--json) and a source | target | ours image grid (--grid).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="LPIPS/SSIM/CSIM/NME, GMACs and timings on test clips (paper Table 2)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, metavar="C",
                   help="model checkpoint (default: the shipped demo model)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset written by `bilayer preprocess`")
    p.add_argument("--split", choices=("test", "train", "all"),
                   help="default: the checkpoint's test split when DIR is the dataset it was trained on, "
                        "every clip otherwise (the choice is printed)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="identities held out as test (default: the checkpoint's training config, else 0.05)")
    p.add_argument("--max-clips", type=int, default=50, metavar="N", help="clips (one per identity); paper: 50")
    p.add_argument("--clips-per-identity", type=int, default=1, metavar="K",
                   help="clips of each identity (paper: 1; more for test sets with few identities)")
    p.add_argument("--mask", choices=("target", "own", "predicted"), default="target",
                   help="which mask cuts the images: target (all: the target's dataset mask), own (output: its "
                        "predicted mask, target and source: their dataset masks), predicted (all: the predicted "
                        "one, as the official code)")
    p.add_argument("--mask-threshold", type=float, metavar="T",
                   help="cut every mask (target's, source's, predicted) into 0/1 at T (default: soft masks)")
    p.add_argument("--metrics", default="lpips,ssim,csim,nme", help="comma-separated registered metrics")
    p.add_argument("--lpips-backbone", type=Path, metavar="FILE",
                   help="torchvision ImageNet weights of the LPIPS backbone "
                        "(vgg16-397923af.pth or alexnet-owt-7be5be79.pth)")
    p.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg", help="LPIPS backbone (official code: vgg)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as one JSON object")
    p.add_argument("--grid", type=Path, metavar="PNG", help="write a source | target | ours grid (.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from bilayer.checkpoint import load_model, resolve_checkpoint
    from bilayer.errors import InputError, MetricUnavailable
    from bilayer.evaluation.protocol import EvalConfig, evaluate, evaluation_split
    from bilayer.evaluation.report import format_table, results_json, write_grid
    from bilayer.io.files import check_output_file, write_json
    from bilayer.metrics.complexity import frame_macs
    from bilayer.metrics.registry import MetricOptions, build_metric, list_metrics

    names = [n for n in args.metrics.split(",") if n]
    unknown = [n for n in names if n not in list_metrics()]
    if unknown:
        raise InputError(f"--metrics: unknown {unknown[0]!r} (known: {', '.join(list_metrics())})")
    if args.max_clips < 1 or args.clips_per_identity < 1:
        raise InputError("--max-clips and --clips-per-identity must be >= 1")
    try:
        cfg = EvalConfig(max_clips=args.max_clips, clips_per_identity=args.clips_per_identity,
                         mask=args.mask, mask_threshold=args.mask_threshold)
    except ValueError as e:
        raise InputError(f"--mask-threshold: {e}") from None
    if args.test_fraction is not None and not 0 <= args.test_fraction <= 1:
        raise InputError(f"--test-fraction must be in [0, 1], got {args.test_fraction:g}")
    if args.json:
        check_output_file(args.json)
    if args.grid:
        check_output_file(args.grid, (".png",))
    checkpoint = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_model(checkpoint)
    meta = ckpt.get("meta", {})
    split, test_fraction, why = evaluation_split(meta, args.data)
    if args.split is not None:
        split, why = args.split, "--split"
        if split == "test" and meta.get("train_config", {}).get("data", {}).get("split") == "all":
            print("evaluate: warning: the checkpoint was trained on split 'all', its test identities were seen")
    test_fraction = args.test_fraction if args.test_fraction is not None else test_fraction
    print(f"evaluate: split {split!r} ({why})")

    opts = MetricOptions(lpips_net=args.lpips_net, lpips_backbone=args.lpips_backbone)
    metrics, unavailable = {}, {}
    for name in names:
        try:
            metrics[name] = build_metric(name, opts)
        except MetricUnavailable as e:
            unavailable[name] = str(e)
    torch.manual_seed(0)
    cfg = replace(cfg, split=split, test_fraction=test_fraction)
    ev = evaluate(model, args.data, metrics, cfg)
    meta = {"checkpoint": str(checkpoint), "data": str(args.data), "split": split,
            "test_fraction": test_fraction, "mask": cfg.mask, "mask_threshold": cfg.mask_threshold,
            "clips": ev.clips}
    results = results_json(ev, unavailable, frame_macs(model.cfg, model)["macs"] / 1e9, meta)

    print(format_table(results))
    if args.json:
        print(f"evaluate: results -> {write_json(args.json, results)}")
    if args.grid:
        print(f"evaluate: grid -> {write_grid(ev, args.grid)}")
    return 0
