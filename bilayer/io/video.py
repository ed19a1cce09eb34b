"""Video output with PyAV (FFmpeg inside the wheel; nothing from the system): the one writer of
rendered videos, sample and synthetic clips.

`open_video(path, fps, width, height, audio_from, codec)` yields a `VideoEncoder` that encodes RGB
frames as H.264 (libx264; MPEG-4 Part 2 where a PyAV build lacks it, or the codec asked for) at
the given frame rate. Audio is carried over from another file (stream-copied when the output
container takes its codec, otherwise transcoded to AAC, cut at the video's end) or written from
samples (`write_audio`). It writes to a hidden temporary file renamed into place on success, so a
failure at any point leaves no partial output behind.
"""
from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from bilayer.errors import InputError
from bilayer.io.files import atomic_path, check_output_file

OUTPUT_EXTENSIONS = (".mp4", ".mkv", ".mov")
#: Audio codecs a container takes by stream copy (anything else is transcoded to AAC); None: all.
REMUX_CODECS: dict[str, set[str] | None] = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mkv": None,
}


def video_codec() -> str:
    """H.264 when PyAV's FFmpeg has libx264, else MPEG-4 Part 2 (always built in)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def check_output_path(path: str | Path) -> Path:
    """A video output path (`files.check_output_file` with the video extensions)."""
    return check_output_file(path, OUTPUT_EXTENSIONS)


class VideoEncoder:
    """frames (H, W, 3) uint8 RGB -> an open output container (see `open_video`). Odd frame sizes
    lose their last row / column (4:2:0 chroma needs even ones)."""

    def __init__(self, out: av.container.OutputContainer, fps: float, width: int, height: int,
                 codec: str | None = None):
        self.out, self.frames = out, 0
        self.rate = Fraction(fps).limit_denominator(1001)
        self.video = out.add_stream(codec or video_codec(), rate=self.rate)
        self.video.width, self.video.height, self.video.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        if self.video.codec_context.name == "libx264":
            self.video.options = {"crf": "18", "preset": "veryfast"}
        self.audio_in = self.audio_out = None
        self.transcode = False

    @property
    def has_audio(self) -> bool:
        return self.audio_out is not None

    def add_audio(self, source: av.container.InputContainer, suffix: str) -> None:
        """Declare the output audio stream from the first audio stream of `source` (if any)."""
        if not source.streams.audio:
            return
        self.audio_in = source.streams.audio[0]
        remux = REMUX_CODECS[suffix]
        if remux is None or self.audio_in.codec_context.name in remux:
            self.audio_out = self.out.add_stream_from_template(self.audio_in)
        else:
            self.audio_out = self.out.add_stream("aac", rate=self.audio_in.codec_context.sample_rate or 44100)
            self.transcode = True

    def write_audio(self, samples: np.ndarray, rate: int, codec: str = "aac") -> None:
        """Mono float32 samples in [-1, 1] at `rate` Hz as the audio track (before any frame)."""
        stream = self.out.add_stream(codec, rate=rate, layout="mono")
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            self.out.mux(stream.encode(frame))
        self.out.mux(stream.encode(None))

    def write(self, rgb: np.ndarray) -> None:
        """rgb: (H, W, 3) uint8."""
        rgb = rgb[: self.video.height, : self.video.width]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self.out.mux(self.video.encode(frame))
        self.frames += 1

    def finish(self, source: av.container.InputContainer | None) -> None:
        """Flush the video encoder, then copy/transcode the audio up to the video's end."""
        self.out.mux(self.video.encode(None))
        if self.audio_out is None:
            return
        end = self.frames / self.rate  # seconds
        for packet in source.demux(self.audio_in):
            if packet.dts is None:  # demuxer flush packet
                continue
            if packet.pts is not None and packet.pts * packet.time_base >= end:
                break
            if self.transcode:
                for frame in packet.decode():
                    self.out.mux(self.audio_out.encode(frame))
            else:
                packet.stream = self.audio_out
                self.out.mux(packet)
        if self.transcode:
            self.out.mux(self.audio_out.encode(None))


@contextlib.contextmanager
def open_video(path: str | Path, fps: float, width: int, height: int, audio_from: str | Path | None = None,
               codec: str | None = None) -> Iterator[VideoEncoder]:
    """Atomic video output: the file appears at `path` only if the `with` body succeeds. The
    container follows the suffix (`check_output_path` checks the ones for rendered videos)."""
    path = Path(path)
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        out = stack.enter_context(av.open(str(tmp), "w"))
        source = stack.enter_context(av.open(str(audio_from))) if audio_from is not None else None
        encoder = VideoEncoder(out, fps, width, height, codec)
        if source is not None:
            encoder.add_audio(source, path.suffix.lower())
        yield encoder
        if encoder.frames == 0:
            raise InputError(f"{path}: no frames to write")
        encoder.finish(source)
