"""Reading media: videos with PyAV (FFmpeg inside the wheel), photos with OpenCV (the one reader of
preprocessing, photos and driving videos).

Every problem with a file becomes a `SkipInput` carrying a one-line reason, so the caller can
record it and go on with the next input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from bilayer.errors import SkipInput
from bilayer.io.native import quiet_stderr

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "video" or "image"
    fps: float  # 0 for images
    width: int
    height: int
    frames: int | None = None  # in the file, when its container says (estimated from its duration)


def is_media(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS


def _one_line(e: Exception) -> str:
    """FFmpeg's message without errno and path (the report names the file already)."""
    text = getattr(e, "strerror", None) or str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class MediaReader:
    """Frames of a video or photo as (index, time in s, (H, W, 3) uint8 RGB), decoded lazily.

    `frame_step` keeps every n-th frame, `max_frames` stops after that many kept frames (the
    paper's VoxCeleb2-HQ keeps the first 250 frames, i.e. 10 s).
    """

    def __init__(self, path: str | Path, frame_step: int = 1, max_frames: int | None = None):
        self.path = Path(path)
        self.frame_step, self.max_frames = frame_step, max_frames
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS:
            raise SkipInput(self.path, f"unsupported file type {suffix or '(none)'!r}")
        try:
            size = self.path.stat().st_size
        except OSError as e:
            raise SkipInput(self.path, f"cannot read file ({e.strerror})") from None
        if size == 0:
            raise SkipInput(self.path, "empty file (0 bytes)")
        self._container = None
        if suffix in IMAGE_EXTENSIONS:
            self._image = self._read_image()
            h, w = self._image.shape[:2]
            self.info = MediaInfo("image", 0.0, w, h, 1)
        else:
            self._open_video()

    def _read_image(self) -> np.ndarray:
        data = np.fromfile(self.path, np.uint8)
        with quiet_stderr():  # libpng warns about harmless colour-profile quirks
            bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # also applies the EXIF orientation
        if bgr is None:
            raise SkipInput(self.path, "cannot decode image (corrupt or unknown format)")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _open_video(self) -> None:
        import av

        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise SkipInput(self.path, f"cannot open video ({_one_line(e)})") from None
        if not self._container.streams.video:
            self.close()
            raise SkipInput(self.path, "no video stream")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        frames = stream.frames or (round(float(stream.duration * stream.time_base) * fps) if stream.duration else None)
        self.info = MediaInfo("video", fps, stream.width, stream.height, frames or None)

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        if self._container is None:
            yield 0, 0.0, self._image
            return
        import av

        kept = index = 0
        try:
            for frame in self._container.decode(video=0):
                if index % self.frame_step == 0:
                    t = float(frame.time) if frame.time is not None else index / self.info.fps
                    yield index, t, _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                    kept += 1
                    if self.max_frames is not None and kept >= self.max_frames:
                        return
                index += 1
        except av.error.FFmpegError as e:
            raise SkipInput(self.path, f"decode error at frame {index} ({_one_line(e)})") from None
        if index == 0:
            raise SkipInput(self.path, "no decodable video frames")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "MediaReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply the display-matrix rotation of phone videos (counter-clockwise degrees)."""
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image
