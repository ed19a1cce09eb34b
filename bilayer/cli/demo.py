"""`bilayer demo [--out DIR]`: an avatar from a bundled real photo, driven by a bundled real motion track.

Source: Grace Hopper's portrait from matplotlib's sample data (an identity the demo model never
saw). Motion: the keypoint track of a held-out clip (bilayer/assets/demo_track.npy, made with
`bilayer track`), transferred relative to its first frame. Writes DIR/output.mp4 (with
`--paste-back`: in the photo's full frame), DIR/side_by_side.mp4 (source | driver keypoints |
result) and DIR/contact_sheet.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bilayer.assets import DEMO_TRACK, DEMO_TRACK_FPS
from bilayer.cli.animate import add_render_arguments

DEMO_PHOTO = "grace_hopper"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="animate a bundled photo with a bundled motion track (demo model)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo"), metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--source", metavar="PHOTO", help="your own photo instead of the bundled one")
    p.add_argument("--checkpoint", metavar="C", help="model checkpoint (default: the shipped demo model)")
    add_render_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from bilayer.data.samples import SAMPLE_PHOTOS
    from bilayer.io.files import check_output_folder
    from bilayer.runtime.pipeline import AnimateOptions, animate

    start = time.perf_counter()
    options = AnimateOptions(relative=True, backend=args.backend, precision=args.precision, fps=DEMO_TRACK_FPS,
                             background=args.background, paste_back=args.paste_back)
    check_output_folder(args.out).mkdir(parents=True, exist_ok=True)
    source = args.source or SAMPLE_PHOTOS[DEMO_PHOTO].path
    outputs = {"video": args.out / "output.mp4", "side by side": args.out / "side_by_side.mp4",
               "contact sheet": args.out / "contact_sheet.png"}
    r = animate(source, outputs["video"], args.checkpoint, keypoints=DEMO_TRACK, options=options,
                progress=not args.quiet, side_by_side_out=outputs["side by side"],
                contact_sheet=outputs["contact sheet"])
    print(f"demo: {r.frames} frames of {source}; init {r.init_ms:.0f} ms, render {r.frame_ms:.1f} ms/frame "
          f"({args.backend}/{r.precision}: {r.precision_note}); {time.perf_counter() - start:.0f} s in all")
    for what, path in outputs.items():
        print(f"  {what:13s} {path}")
    return 0
