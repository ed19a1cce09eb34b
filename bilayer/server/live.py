"""One camera stream: JPEG frames in, the avatar driven by them out, as JPEG frames.

Per frame, as `bilayer animate` does per video frame: the driver's face with the preprocessing's
detector, keypoints and One-Euro-smoothed crop (`faces.annotator`, one per stream, fed each
frame's arrival time), relative motion (`pipeline.Driving`: the avatar keeps its face shape), the
render, the foreground on the chosen background or pasted back into the photo (`pipeline.compose`),
optionally source | driver | result side by side. Each stage is timed (`StageTimes`).

`Mailbox` holds the newest frame not yet processed: a frame that arrives while another waits
replaces it, so a slow server drops stale frames instead of queueing latency.

Face annotators are pooled (`AnnotatorPool`): one that a stream has finished with is reset and
handed to the next stream. Dropping one does not free it (its MediaPipe graph keeps its threads
and memory), and loading one takes a noticeable fraction of a second.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from bilayer.errors import InputError
from bilayer.runtime.choices import BACKGROUNDS
from bilayer.runtime.faces import annotator
from bilayer.runtime.paste import PasteBack
from bilayer.runtime.pipeline import AnimateOptions, Driving, compose
from bilayer.server.avatars import AvatarEntry
from bilayer.server.uploads import check_pixels, declared_size

if TYPE_CHECKING:
    from bilayer.data.preprocess.annotator import Annotation, FaceAnnotator

STAGES = ("decode", "keypoints", "render", "compose", "encode")
JPEG_QUALITY = 85


class StageTimes:
    """Durations of the stages of the last `window` frames, summarized in milliseconds."""

    def __init__(self, window: int = 1000):
        self.frames = 0
        self._samples = {stage: deque(maxlen=window) for stage in STAGES}
        self._lock = threading.Lock()  # frames of several streams are timed from pool threads

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._samples[stage].append(seconds)
            self.frames += stage == STAGES[-1]

    def summary(self) -> dict:
        """{"frames": n, "stages": {stage: {"p50_ms", "p99_ms", "mean_ms"}}} (stages without samples left out)."""
        with self._lock:
            samples = {stage: np.array(values) * 1000 for stage, values in self._samples.items() if values}
            frames = self.frames
        return {"frames": frames, "stages": {
            stage: {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "mean_ms": round(float(ms.mean()), 3)}
            for stage, ms in samples.items()}}


class Mailbox:
    """The newest unprocessed frame of a stream (see the module); `get` returns None once closed."""

    def __init__(self) -> None:
        self.dropped = 0
        self.closed = False
        self._item: tuple[bytes, float] | None = None
        self._ready = asyncio.Event()

    def put(self, item: tuple[bytes, float]) -> None:
        self.dropped += self._item is not None
        self._item = item
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> tuple[bytes, float] | None:
        await self._ready.wait()
        self._ready.clear()
        item, self._item = self._item, None
        return None if self.closed else item


class AnnotatorPool:
    """Idle face annotators of the model's crop size and preprocessing profile (see the module);
    holds at most as many as streams ever ran at once."""

    def __init__(self, size: int, profile: str):
        self.size, self.profile = size, profile
        self._idle: list[FaceAnnotator] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> FaceAnnotator:
        """An idle annotator, or a new one (loads the detector models: call it off the event loop)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return annotator(self.size, with_mask=False, profile=self.profile, crop="smoothed")

    def give(self, face: FaceAnnotator) -> None:
        face.reset()
        with self._lock:
            self._idle.append(face)


def decode_frame(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    """A JPEG (or PNG) frame -> (H, W, 3) uint8 RGB; one-line errors."""
    name = f"frame {index}"
    check_pixels(name, declared_size(io.BytesIO(data)), max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise InputError(f"{name}: cannot decode image (corrupt or unknown format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


class LiveSession:
    """One stream driving one avatar with annotator `face` (`options`: relative, background,
    side_by_side, paste_back). Create it and `process` its frames, one at a time, off the event loop."""

    def __init__(self, entry: AvatarEntry, options: AnimateOptions, face: FaceAnnotator, max_pixels: int,
                 server_times: StageTimes):
        self.entry, self.options, self.face, self.max_pixels = entry, options, face, max_pixels
        self.size = entry.avatar.model.cfg.image_size
        self.driving = Driving(entry.avatar.source_face.keypoints, options.relative)
        self.background = BACKGROUNDS[options.background]
        self.paste = PasteBack(entry.avatar.source_face) if options.paste_back else None  # fills the photo once
        self.box = None  # the driver's last crop box (its panel when the face is lost)
        self.times, self.server_times = StageTimes(), server_times
        self.frames = 0  # processed (rendered or refused)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        for times in (self.times, self.server_times):
            times.add(name, time.perf_counter() - start)

    def process(self, data: bytes, t: float) -> bytes:
        """A camera frame (JPEG bytes, arrival time t in seconds) -> the rendered frame as JPEG."""
        self.frames += 1
        with self.stage("decode"):
            rgb = decode_frame(data, self.frames - 1, self.max_pixels)
        with self.stage("keypoints"):
            found = self.face(rgb, t)
            keypoints = self.driving(None if found is None else found.keypoints)  # (68, 2) in [-1, 1]
        with self.stage("render"), self.entry.lock:
            image, mask = self.entry.avatar.render(keypoints)  # (1, 3, S, S) in [-1, 1], (1, 1, S, S)
        with self.stage("compose"):
            result = compose(image, mask, self.paste, self.background)  # (H, W, 3): crop or photo
            if self.options.side_by_side:  # as `animate`: a pasted frame shows at the crop
                face = self.entry.avatar.source_face
                crop = face.box.crop(result, self.size) if self.paste is not None else result
                result = np.concatenate([face.image, self.driver_view(rgb, found), crop], axis=1)
        with self.stage("encode"):
            return encode_jpeg(result)

    def driver_view(self, rgb: np.ndarray, found: Annotation | None) -> np.ndarray:
        """(S, S, 3) the driver's crop (where the face is lost: the last crop box, else the frame squeezed)."""
        if found is not None:
            self.box = found.crop_box
            return found.image
        return self.box.crop(rgb, self.size) if self.box is not None else cv2.resize(rgb, (self.size, self.size))
