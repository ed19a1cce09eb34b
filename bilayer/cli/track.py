"""`bilayer track VIDEO --out TRACK.npy`: a driving video's keypoint track, for `animate --keypoints`."""
from __future__ import annotations

import argparse

from bilayer.cli.animate import add_driver_crop_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="store the (T, 68, 2) keypoint track of a driving video",
                       description=__doc__.splitlines()[0])
    p.add_argument("video", metavar="VIDEO", help="driving video")
    p.add_argument("--out", required=True, metavar="TRACK.npy", help="output .npy, keypoints in [-1, 1] of the crop")
    p.add_argument("--checkpoint", metavar="C", help="the model the track is for, whose preprocessing profile "
                                                       "it follows (default: the shipped demo model)")
    add_driver_crop_argument(p)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def checkpoint_profile(checkpoint: str | None) -> str:
    """The preprocessing profile (ModelConfig.preprocessing) of `checkpoint`, or of the demo model."""
    from bilayer.checkpoint import read_checkpoint, resolve_checkpoint
    from bilayer.config import ConfigError, ModelConfig, from_dict
    from bilayer.errors import InputError

    path = resolve_checkpoint(checkpoint)
    try:
        return from_dict(ModelConfig, read_checkpoint(path)["model_config"]).preprocessing
    except ConfigError as e:
        raise InputError(f"{path}: {e}") from None


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from bilayer.io.files import atomic_path, check_output_file
    from bilayer.runtime.pipeline import check_max_frames, record_track

    out = check_output_file(args.out, (".npy",))
    check_max_frames(args.max_frames)  # before the checkpoint is read
    profile = checkpoint_profile(args.checkpoint)
    fps, track, faceless = record_track(args.video, args.max_frames, progress=not args.quiet, profile=profile,
                                        driver_crop=args.driver_crop)
    with atomic_path(out) as tmp:
        np.save(tmp, track)
    print(f"{out}: {len(track)} frames at {fps:g} fps" + (f" ({faceless} without a face: previous pose kept)" if faceless else "")
          + f"; drive with: bilayer animate --source PHOTO --keypoints {out} --fps {fps:g} --relative --out OUT.mp4")
    return 0
