"""Animation pipeline (files in, video out) around the tensor-level `Avatar`.

    animate(source photo, driver video | keypoint track) -> video at the driver's frame rate

1. check the inputs (before any model is loaded);
2. create the avatar from the photo, once (detect, crop, init, fold: `Avatar.from_image`);
3. track the driver's face online with the preprocessing's detector and the model's preprocessing
   profile, one smoothed crop box for the whole clip (or per-frame crops: `driver_crop="exact"`),
   or read a stored (T, 68, 2) keypoint track;
4. absolute or relative motion transfer (`motion.RelativeMotion`);
5. render each frame, put it on the chosen background or paste it back into the source photo's
   full frame (`paste.PasteBack`), and encode it (audio of the driver kept; `VideoWriter` is atomic).

Frames where the driver's face is lost reuse the last keypoints (before the first face: the
source pose), so the output keeps the driver's frame count and stays in sync with its audio.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from torch import Tensor
from tqdm import tqdm

from bilayer.checkpoint import resolve_checkpoint
from bilayer.config import Profile
from bilayer.data.landmarks import draw_profile_landmarks
from bilayer.errors import InputError
from bilayer.io.images import to_uint8
from bilayer.io.video import check_output_path, open_video
from bilayer.nets import BilayerModel, apply_mask
from bilayer.runtime.avatar import Avatar
from bilayer.runtime.backends import check_backend
from bilayer.runtime.choices import BACKGROUNDS, DRIVER_CROPS
from bilayer.runtime.motion import RelativeMotion
from bilayer.runtime.paste import PasteBack
from bilayer.runtime.sheet import ContactSheet


@dataclass(frozen=True)
class AnimateOptions:
    relative: bool = False  # driver motion relative to its first frame, scaled to the source's face
    side_by_side: bool = False  # write source | driver | result
    backend: str = "torch"
    precision: str = "auto"  # or a runner precision of `backend` (choices.PRECISIONS)
    fps: float = 25.0  # frame rate of a keypoint track (a video keeps its own)
    max_frames: int | None = None
    background: str = "black"  # behind the predicted mask: a key of choices.BACKGROUNDS
    driver_crop: str = "smoothed"  # a driving video's crop: one of choices.DRIVER_CROPS
    paste_back: bool = False  # the result in the source photo's full frame (its size), not the crop

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise InputError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.paste_back and self.background != AnimateOptions.background:
            raise InputError(f"background {self.background!r} does not apply with paste_back (the photo is behind)")
        check_driver_crop(self.driver_crop)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"fps must be a number > 0, got {self.fps:g}")
        check_max_frames(self.max_frames)


def check_max_frames(max_frames: int | None) -> None:
    """None (all frames) or at least 1."""
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be >= 1, got {max_frames}")


def check_driver_crop(driver_crop: str) -> None:
    """One of choices.DRIVER_CROPS."""
    if driver_crop not in DRIVER_CROPS:
        raise InputError(f"driver_crop must be one of {', '.join(DRIVER_CROPS)}, got {driver_crop!r}")


@dataclass
class AnimateResult:
    path: Path
    frames: int
    fps: float
    has_audio: bool
    faceless_frames: int  # driver frames without a detected face (previous pose reused)
    init_ms: float
    frame_ms: float  # median render time per frame
    precision: str  # the runner's (`options.precision` resolved: "auto" -> "bf16" or "fp32")
    precision_note: str  # why that precision (`Avatar.precision_note`)


@dataclass
class DriverFrame:
    keypoints: np.ndarray | None  # (68, 2) in [-1, 1] or None when no face was found
    view: np.ndarray  # (S, S, 3) uint8 RGB driver panel for --side-by-side (crop or landmark image)


def load_keypoint_track(path: str | Path) -> np.ndarray:
    """A stored track: .npy of shape (T, 68, 2), normalized crop coordinates in [-1, 1]."""
    path = Path(path)
    try:
        track = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read keypoints ({str(e).splitlines()[0]})") from None
    if track.ndim != 3 or track.shape[1:] != (68, 2) or len(track) == 0:
        raise InputError(f"{path}: keypoints must have shape (T, 68, 2), got {track.shape}")
    if track.dtype.kind not in "iuf":
        raise InputError(f"{path}: keypoints must be numbers, got dtype {track.dtype}")
    if not np.isfinite(track).all():
        raise InputError(f"{path}: keypoints contain NaN or Inf")
    if np.abs(track).max() > 2:
        raise InputError(f"{path}: keypoints must be normalized to [-1, 1] (these look like pixel coordinates)")
    return track.astype(np.float32)


def track_video(path: Path, size: int, max_frames: int | None, profile: Profile = "bilayer",
                driver_crop: str = "smoothed") -> tuple[float, int | None, Iterator[DriverFrame]]:
    """(fps, frame count when the file says, frames): the driver's face keypoints in `profile`'s
    convention, tracked online with one smoothed crop (or `driver_crop="exact"`: each frame's own)."""
    from bilayer.io.media import MediaReader
    from bilayer.runtime.faces import annotator

    reader = MediaReader(path, max_frames=max_frames)
    if reader.info.kind != "video":
        reader.close()
        raise InputError(f"{path}: the driver must be a video")

    def frames() -> Iterator[DriverFrame]:
        box = None
        with reader, annotator(size, with_mask=False, profile=profile, crop=driver_crop) as face:
            for _, t, rgb in reader.frames():
                found = face(rgb, t)
                if found is not None:
                    box = found.crop_box
                    yield DriverFrame(found.keypoints, found.image)
                else:
                    yield DriverFrame(None, box.crop(rgb, size) if box is not None else _centre_crop(rgb, size))

    count = reader.info.frames if max_frames is None or reader.info.frames is None else min(reader.info.frames, max_frames)
    return reader.info.fps, count, frames()


def record_track(video: str | Path, max_frames: int | None = None, progress: bool = True, profile: Profile = "bilayer",
                 driver_crop: str = "smoothed") -> tuple[float, np.ndarray, int]:
    """(fps, (T, 68, 2) float32 track, faceless frame count) of a driving video, for `--keypoints`
    of a model of preprocessing `profile`.

    Frames without a face repeat the last keypoints (the ones before the first face take the
    first found), so the track keeps the video's frame count and timing.
    """
    video = Path(video)
    if not video.is_file():
        raise InputError(f"{video}: driver video not found")
    check_max_frames(max_frames)
    check_driver_crop(driver_crop)
    fps, count, frames = track_video(video, 256, max_frames, profile, driver_crop)
    found = [f.keypoints for f in tqdm(frames, total=count, unit="frame", disable=not progress, desc="track")]
    first = next((k for k in found if k is not None), None)
    if first is None:
        raise InputError(f"{video}: no face found in any frame")
    track, last = [], first
    for k in found:
        last = last if k is None else k
        track.append(last)
    return fps, np.stack(track).astype(np.float32), sum(k is None for k in found)


def _centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    from bilayer.data.preprocess.geometry import CropBox

    h, w = rgb.shape[:2]
    side = min(h, w)
    return CropBox((w - side) // 2, (h - side) // 2, side).crop(rgb, size)


def compose(image: Tensor, mask: Tensor, paste: PasteBack | None, background: float | None) -> np.ndarray:
    """A render (image (1, 3, S, S), mask (1, 1, S, S)) -> the output frame, (H, W, 3) uint8 RGB:
    pasted back into the photo's full frame, or the (S, S) crop on `background` (None: raw)."""
    if paste is not None:
        return paste(image, mask)
    if background is not None:
        image = apply_mask(image, mask, background)
    return to_uint8(image)[0]


class Driving:
    """Driver keypoints -> avatar keypoints: absolute, or relative to the driver's first face."""

    def __init__(self, source: np.ndarray, relative: bool):
        self.source, self.relative = source, relative
        self.motion: RelativeMotion | None = None
        self.last = source  # before the first face: the source pose

    def __call__(self, driver: np.ndarray | None) -> np.ndarray:
        if driver is not None:
            if self.relative and self.motion is None:
                self.motion = RelativeMotion(self.source, driver)
            self.last = self.motion(driver) if self.relative else driver
        return self.last


def animate(source: str | Path, out: str | Path, checkpoint: BilayerModel | str | Path | None = None,
            driver: str | Path | None = None, keypoints: str | Path | None = None,
            options: AnimateOptions = AnimateOptions(), progress: bool = True,
            side_by_side_out: str | Path | None = None, contact_sheet: str | Path | None = None,
            on_frame: Callable[[int, int | None], None] | None = None) -> AnimateResult:
    """Write `out` (and, from the same pass, a source | driver | result video `side_by_side_out`
    and a PNG `contact_sheet` of such rows, when given). `checkpoint`: a file (None: the demo
    model) or an already loaded model; `on_frame(done, total)` is called after each frame (total:
    None when the driver's frame count is unknown)."""
    # 1. Inputs.
    if (driver is None) == (keypoints is None):
        raise InputError("give exactly one of a driver video or a keypoint track")
    out = check_output_path(out)
    side_by_side_out = None if side_by_side_out is None else check_output_path(side_by_side_out)
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: source photo not found")
    if driver is not None and not Path(driver).is_file():
        raise InputError(f"{driver}: driver video not found")
    track = load_keypoint_track(keypoints) if keypoints is not None else None
    model = checkpoint if isinstance(checkpoint, BilayerModel) else resolve_checkpoint(checkpoint)
    check_backend(options.backend, options.precision)

    # 2. Avatar, once.
    start = time.perf_counter()
    avatar = Avatar.from_image(source, model, options.backend, options.precision)
    init_ms = 1000 * (time.perf_counter() - start)
    size, profile = avatar.model.cfg.image_size, avatar.model.cfg.preprocessing

    # 3. Driving keypoints.
    if track is not None:
        fps = options.fps
        frames: Iterator[DriverFrame] = (
            DriverFrame(k, draw_profile_landmarks(k, size, profile)) for k in track[: options.max_frames]
        )
        total = len(track[: options.max_frames])
    else:
        fps, total, frames = track_video(Path(driver), size, options.max_frames, profile, options.driver_crop)

    # 4-5. Motion, render, the foreground on the chosen background or pasted back into the photo
    # (frames of its size; panels show the pasted frame at the crop), encode.
    face = avatar.source_face
    driving = Driving(face.keypoints, options.relative)
    paste = PasteBack(face) if options.paste_back else None
    background = BACKGROUNDS[options.background]
    height, width = face.photo.shape[:2] if paste is not None else (size, size)
    times, faceless = [], 0
    audio = Path(driver) if driver is not None else None
    sheet = ContactSheet() if contact_sheet is not None else None
    with contextlib.ExitStack() as outputs:
        shape = (3 * size, size) if options.side_by_side else (width, height)
        writer = outputs.enter_context(open_video(out, fps, *shape, audio))
        panels = None if side_by_side_out is None else outputs.enter_context(open_video(side_by_side_out, fps, 3 * size, size, audio))
        bar = tqdm(frames, total=total, unit="frame", disable=not progress, desc="animate")
        for index, frame in enumerate(bar):
            faceless += frame.keypoints is None
            t0 = time.perf_counter()
            image, mask = avatar.render(driving(frame.keypoints))  # (1, 3, S, S), (1, 1, S, S)
            times.append(time.perf_counter() - t0)
            result = compose(image, mask, paste, background)  # (H, W, 3)
            if options.side_by_side or panels is not None or sheet is not None:
                crop = face.box.crop(result, size) if paste is not None else result
                panel = np.concatenate([face.image, frame.view, crop], axis=1)
                if panels is not None:
                    panels.write(panel)
                if sheet is not None:
                    sheet.add(index, panel)
            writer.write(panel if options.side_by_side else result)
            bar.set_postfix(render_ms=f"{1000 * times[-1]:.1f}")
            if on_frame is not None:
                on_frame(index + 1, total)
        if track is None and faceless == writer.frames:
            raise InputError(f"{driver}: no face found in any frame")
        has_audio = writer.has_audio
    if sheet is not None:
        sheet.write(contact_sheet)
    frame_ms = 1000 * float(np.median(times)) if times else 0.0
    return AnimateResult(out, len(times), fps, has_audio, faceless, init_ms, frame_ms, avatar.precision,
                         avatar.precision_note)
