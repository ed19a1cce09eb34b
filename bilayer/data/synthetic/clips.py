"""Synthetic training clips: a photo's head animated by smooth random motion, encoded as a video.

The clips are ordinary video files, so `bilayer preprocess` detects faces, keypoints and masks on
them exactly as on real footage (the keypoints come from the synthesized frames themselves).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bilayer.data.samples import encode_video
from bilayer.data.synthetic.animator import HeadAnimator
from bilayer.data.synthetic.motion import MotionRanges, random_motion
from bilayer.errors import InputError
from bilayer.io.video import video_codec


def clip_frames(seconds: float, fps: int) -> int:
    """Frames of a clip: at least 2 (the motion has velocities), else a one-line `InputError`."""
    n = round(seconds * fps) if fps > 0 else 0
    if n < 2:
        raise InputError(f"a clip of {seconds:g} s at {fps} fps has {n} frames; it needs at least 2")
    return n


def make_clip(photo: str | Path | HeadAnimator, out_path: str | Path, seconds: float = 4.0, fps: int = 25,
              seed: int = 0, size: int = 384, ranges: MotionRanges = MotionRanges()) -> Path:
    """Write `seconds` of the photo's head moving (random_motion(seed)) to `out_path` (.mp4).

    `photo` is a path or a ready HeadAnimator (reused across clips of one photo; then `size` is
    the animator's). The frames are deterministic per seed; the video is size x size at `fps`.
    """
    animator = photo if isinstance(photo, HeadAnimator) else HeadAnimator.from_file(photo, size)
    motion = random_motion(clip_frames(seconds, fps), fps, seed, ranges)
    frames = np.stack([animator.render(m) for m in motion])  # (T, S, S, 3) uint8 RGB
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return encode_video(out_path, frames, fps, video_codec(), audio=False)
