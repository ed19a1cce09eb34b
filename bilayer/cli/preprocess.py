"""`bilayer preprocess INPUT... --out DIR`: videos/photos -> face crops, 68 keypoints, masks.

`bilayer preprocess --official-layout DATA_ROOT --out DIR` imports data prepared for the authors'
released code instead (DATA_ROOT/[imgs, keypoints, segs]/[train, test]/PERSON/VIDEO/SEQUENCE/...;
one clip per sequence, --config/--set then set OfficialLayoutConfig).

Exit codes: 0 every input produced data, 3 some inputs were skipped (reasons in DIR/skipped.jsonl
and in --report-json), 2 usage errors.
"""
from __future__ import annotations

import argparse

EXIT_SKIPPED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess", help="annotate real videos/photos into a training dataset (resumable)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video or image files, or folders of them")
    p.add_argument("--official-layout", metavar="DATA_ROOT",
                   help="import data prepared for the authors' code (imgs/, keypoints/, segs/) instead of INPUTs")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (created; re-runs resume)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (one per core)")
    p.add_argument("--report-json", metavar="FILE", help='write {"clips_ok", "frames", "skipped": [{"path", "reason"}]}')
    p.add_argument("--identity-from", choices=("folder", "parent", "stem"),
                   help="how clip identities are named (default folder; see docs/data.md)")
    p.add_argument("--config", metavar="YAML", help="PreprocessConfig (OfficialLayoutConfig) as YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. max_frames=250 or annotator.detect_every=3; fps=30 with "
                        "--official-layout (repeatable)")
    p.add_argument("--retry-skipped", action="store_true",
                   help="redo the inputs that earlier runs skipped (default: report their skips again)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilayer.config import apply_overrides, load_yaml
    from bilayer.data.preprocess.official_layout import OfficialLayoutConfig, run_official_import
    from bilayer.data.preprocess.pipeline import PreprocessConfig, run_preprocess
    from bilayer.errors import InputError
    from bilayer.io.files import check_output_file, check_output_folder, write_json

    if args.official_layout is not None and (args.inputs or args.identity_from):
        given = "INPUT paths" if args.inputs else "--identity-from"
        raise InputError(f"--official-layout imports DATA_ROOT as it is: give no {given} with it")
    if args.official_layout is None and not args.inputs:
        raise InputError("no INPUT given (video or image files, or folders; or --official-layout DATA_ROOT)")
    cls = OfficialLayoutConfig if args.official_layout is not None else PreprocessConfig
    cfg = load_yaml(cls, args.config) if args.config else cls()
    overrides = list(args.set) + ([f"identity_from={args.identity_from}"] if args.identity_from else [])
    cfg = apply_overrides(cfg, overrides)
    check_output_folder(args.out)
    if args.report_json:
        check_output_file(args.report_json)
    options = dict(workers=args.workers, progress=not args.quiet, retry_skipped=args.retry_skipped)
    if args.official_layout is not None:
        summary = run_official_import(args.official_layout, args.out, cfg, **options)
    else:
        summary = run_preprocess(args.inputs, args.out, cfg, **options)

    if args.report_json:
        write_json(args.report_json, summary.report())
    earlier = summary.clips_ok - summary.new_clips
    print(f"preprocess: {summary.clips_ok} clips ok ({summary.new_clips} new, {earlier} done earlier), "
          f"{summary.frames} frames, {len(summary.skipped)} skipped -> {args.out}")
    for s in summary.skipped:
        print(f"  skipped {s.source}: {s.reason}")
    if summary.new_frames:
        per_frame = ", ".join(f"{k} {1000 * v / summary.new_frames:.1f}" for k, v in summary.stage_seconds.items())
        print(f"speed: {summary.new_frames / summary.seconds:.1f} frames/s with {args.workers} worker(s); "
              f"ms per kept frame (all workers): {per_frame}")
    return EXIT_SKIPPED if summary.skipped else 0
