"""Real sample media for tests, benchmarks and demos, taken from installed registry packages.

Nothing is downloaded and no binary media is committed: the photos ship inside the scikit-image
and matplotlib wheels, and `make_sample_video` encodes a real video file (H.264 or MPEG-4 Part 2,
optional AAC audio) of a photo whose head moves smoothly, with PyAV.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bilayer.io.native import quiet_stderr


@dataclass(frozen=True)
class SamplePhoto:
    name: str
    package: str
    relpath: str  # inside the package folder
    has_face: bool
    face: tuple[float, float, float] | None  # (cx, cy, size) of the keypoints' box, measured once

    @property
    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"{self.package} is not installed (pip install 'bilayer[data]')")
        return Path(spec.submodule_search_locations[0]) / self.relpath


SAMPLE_PHOTOS = {
    p.name: p
    for p in (
        # Eileen Collins, NASA portrait.
        SamplePhoto("astronaut", "skimage", "data/astronaut.png", True, (226.0, 132.5, 92.0)),
        # Grace Hopper, US Navy portrait.
        SamplePhoto("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", True, (265.5, 245.0, 175.0)),
        # A cat: a real photo without a human face.
        SamplePhoto("chelsea", "skimage", "data/chelsea.png", False, None),
    )
}


def load_photo(name: str) -> np.ndarray:
    """A sample photo as (H, W, 3) uint8 RGB."""
    with quiet_stderr():  # libpng warns about the colour profile of some of these files
        bgr = cv2.imread(str(SAMPLE_PHOTOS[name].path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def head_motion_frames(photo: str, num_frames: int, fps: float) -> np.ndarray:
    """(T, H, W, 3) uint8: the photo with its head turning, nodding and moving smoothly.

    Each frame warps the image by a small similarity transform about the face centre, faded out
    with distance from the face so that the background stays still (like an interview shot).
    """
    image = load_photo(photo)
    cx, cy, size = SAMPLE_PHOTOS[photo].face
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / (1.3 * size) ** 2))  # (H, W)
    frames = []
    for i in range(num_frames):
        t = i / fps
        angle = math.radians(7 * math.sin(2 * math.pi * 0.45 * t))
        scale = 1 + 0.06 * math.sin(2 * math.pi * 0.3 * t + 0.5)
        dx = 0.10 * size * math.sin(2 * math.pi * 0.35 * t + 1.0)
        dy = 0.05 * size * math.sin(2 * math.pi * 0.6 * t)
        # Inverse map of p -> c + s R (p - c) + d, blended into the identity by the weight.
        c, s = math.cos(angle), math.sin(angle)
        u, v = xs - cx - dx, ys - cy - dy
        src_x = cx + (c * u + s * v) / scale
        src_y = cy + (-s * u + c * v) / scale
        map_x = xs + weight * (src_x - xs)
        map_y = ys + weight * (src_y - ys)
        frames.append(cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def speech_like_audio(seconds: float, rate: int = 16000) -> np.ndarray:
    """(N,) float32 in [-1, 1]: a voiced tone with a gliding pitch and ~4 syllables per second."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    return (0.3 * voice * envelope).astype(np.float32)


def make_sample_video(path: str | Path, photo: str = "grace_hopper", seconds: float = 2.0, fps: int = 25,
                      codec: str = "libx264", audio: bool = True) -> Path:
    """Encode `seconds` of head motion from a sample photo into `path` (e.g. .mp4, .mkv, .avi)."""
    return encode_video(path, head_motion_frames(photo, round(seconds * fps), fps), fps, codec, audio)


def encode_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264",
                 audio: bool = True) -> Path:
    """frames (T, H, W, 3) uint8 RGB -> a video file; codec "libx264" (H.264) or "mpeg4" (Part 2).

    `audio` adds a mono 16 kHz speech-like track: AAC, or MP2 in an .avi. Written atomically.
    """
    from bilayer.io.video import open_video

    path = Path(path)
    with open_video(path, fps, frames.shape[2], frames.shape[1], codec=codec) as video:
        if audio:
            rate = 16000
            video.write_audio(speech_like_audio(len(frames) / fps, rate), rate,
                              "mp2" if path.suffix.lower() == ".avi" else "aac")
        for rgb in frames:
            video.write(rgb)
    return path
