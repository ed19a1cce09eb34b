"""`bilayer track VIDEO --out TRACK.npy`: a driving video's keypoint track, for `animate --keypoints`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="store the (T, 68, 2) keypoint track of a driving video",
                       description=__doc__.splitlines()[0])
    p.add_argument("video", metavar="VIDEO", help="driving video")
    p.add_argument("--out", required=True, metavar="TRACK.npy", help="output .npy, keypoints in [-1, 1] of the crop")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from bilayer.runtime.files import atomic_path, check_output_file
    from bilayer.runtime.pipeline import record_track

    out = check_output_file(args.out, (".npy",))
    fps, track, faceless = record_track(args.video, args.max_frames, progress=not args.quiet)
    with atomic_path(out) as tmp:
        np.save(tmp, track)
    print(f"{out}: {len(track)} frames at {fps:g} fps" + (f" ({faceless} without a face: previous pose kept)" if faceless else "")
          + f"; drive with: bilayer animate --source PHOTO --keypoints {out} --fps {fps:g} --relative --out OUT.mp4")
    return 0
