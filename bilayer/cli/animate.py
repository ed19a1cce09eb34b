"""`bilayer animate`: drive an avatar made from one photo with a video or a stored keypoint track."""
from __future__ import annotations

import argparse

from bilayer.runtime.choices import BACKENDS, BACKGROUNDS, DRIVER_CROPS, PRECISIONS, RUNNER_PRECISIONS


def add_render_arguments(p: argparse.ArgumentParser) -> None:
    """--background, --paste-back, --backend and --precision (also used by `bilayer demo`)."""
    p.add_argument("--background", choices=tuple(BACKGROUNDS), default="black",
                   help="behind the predicted mask (none: the raw render, whose background is untrained)")
    p.add_argument("--paste-back", action="store_true",
                   help="the result in the source photo's full frame, its own person filled in: frames of the "
                        "photo's size (an odd side loses its last pixel); the photo replaces --background")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    per_backend = "; ".join(f"{b}: {', '.join(ps)}" for b, ps in RUNNER_PRECISIONS.items())
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=f"auto: bf16 where the CPU (AMX, AVX512-BF16) or GPU has it natively and the frames stay "
                        f"within 40 dB of fp32, fp32 elsewhere (printed); {per_backend} (torch fp16: for GPUs)")


def add_driver_crop_argument(p: argparse.ArgumentParser) -> None:
    """--driver-crop (also used by `bilayer track`)."""
    p.add_argument("--driver-crop", choices=DRIVER_CROPS, default="smoothed",
                   help="smoothed: one steady crop that follows the head (default); exact: every frame cropped "
                        "on its own, as the authors' code does (the rendered head shakes with the detector's noise)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("animate", help="animate a photo with a driving video (or keypoint track)")
    p.add_argument("--source", required=True, metavar="PHOTO", help="photo of the avatar's face")
    drive = p.add_mutually_exclusive_group(required=True)
    drive.add_argument("--driver", metavar="VIDEO", help="driving video (its frame rate and audio are kept)")
    drive.add_argument("--keypoints", metavar="FILE.npy", help="stored (T, 68, 2) keypoint track in [-1, 1]")
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="output video (.mp4, .mkv or .mov)")
    p.add_argument("--checkpoint", metavar="C", help="model checkpoint (default: the shipped demo checkpoint)")
    p.add_argument("--relative", action="store_true",
                   help="transfer the driver's motion relative to its first frame (cross-reenactment)")
    p.add_argument("--side-by-side", action="store_true", help="write source | driver | result")
    add_driver_crop_argument(p)
    add_render_arguments(p)
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of a --keypoints track (> 0)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N >= 1 driver frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bilayer.runtime.pipeline import AnimateOptions, animate

    options = AnimateOptions(args.relative, args.side_by_side, args.backend, args.precision, args.fps, args.max_frames,
                             args.background, args.driver_crop, args.paste_back)
    r = animate(args.source, args.out, args.checkpoint, args.driver, args.keypoints, options, progress=not args.quiet)
    audio = "with audio" if r.has_audio else "no audio"
    print(f"{r.path}: {r.frames} frames at {r.fps:g} fps, {audio}; init {r.init_ms:.0f} ms, "
          f"render {r.frame_ms:.1f} ms/frame ({args.backend}/{r.precision}: {r.precision_note})"
          + (f"; no face in {r.faceless_frames} driver frames" if r.faceless_frames else ""))
    return 0
