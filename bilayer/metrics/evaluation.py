"""The paper's evaluation protocol (Sec. 4, App. B.2 Table 2) on a dataset written by `bilayer preprocess`.

"For evaluation, we use a subset of 50 test videos with different identities. The first frame in
each sequence is used as a source. Target frames are taken sequentially at 1 FPS." Per clip:

1. the avatar is initialized once from the clip's first stored frame (timed: Init ms);
2. each target (the first stored frame at or after each whole second of the clip) is rendered
   from its keypoints, one frame at a time (timed: Inf ms);
3. every registered metric scores the output against the target.

Images are compared on the foreground, as the model is trained and the official code evaluates
(background blended to black, Sec. 3.4): the output with its predicted mask, the target with its
dataset mask. Unlike the official code, the target is not cut with the *predicted* mask, so an
empty mask cannot score well. `EvalConfig.mask_threshold` cuts every mask (the target's, the
source's and the predicted one) into 0/1 at a threshold: sharp foregrounds like those of the
paper's segmentation model [15], where soft masks (MediaPipe's confidences) leave a few percent
of the static background in both the target and the copied source.

The copy-source baseline (output = the source frame, cut with its own dataset mask) is scored on
the same pairs with the same metrics, so no number is read alone. With SSIM, both are also scored
on the windows wholly in the target's background and on the rest (`SSIM_REGIONS`), which shows
how much of a gap is the predicted mask's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bilayer.data.dataset import DatasetConfig, PairDataset, Split
from bilayer.data.store import ClipReader, ClipRecord
from bilayer.errors import InputError
from bilayer.metrics.registry import PairMetric
from bilayer.metrics.ssim import background_windows, ssim_by_region
from bilayer.nets import BilayerModel, apply_mask
from bilayer.runtime import Avatar

METHODS = ("ours", "copy_source")
SSIM_REGIONS = ("ssim_foreground", "ssim_background")  # scored alongside "ssim"


@dataclass(frozen=True)
class EvalConfig:
    split: Split = "test"
    test_fraction: float = DatasetConfig.test_fraction  # must match the training run's split
    max_clips: int | None = 50  # the paper's 50 test videos, one per identity
    clips_per_identity: int = 1  # more for test sets with few identities
    target_rate: float = 1.0  # targets per second of video (1 FPS)
    mask_threshold: float | None = None  # None: soft masks; t: every mask cut to (mask >= t)

    def __post_init__(self) -> None:
        if self.mask_threshold is not None and not 0 < self.mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


@dataclass
class PairBatch:
    """All pairs of one clip: what each method outputs and what it is scored against."""

    clip_id: str
    source: Tensor  # (T, 3, H, W) in [-1, 1], masked source (the copy-source output)
    target: Tensor  # (T, 3, H, W) in [-1, 1], masked target
    target_mask: Tensor  # (T, 1, H, W) in [0, 1], the target's dataset mask (cut if mask_threshold)
    target_keypoints: Tensor  # (T, 68, 2) normalized
    ours: Tensor  # (T, 3, H, W) in [-1, 1], masked model output

    def first(self) -> "PairBatch":
        return PairBatch(self.clip_id, self.source[:1], self.target[:1], self.target_mask[:1],
                         self.target_keypoints[:1], self.ours[:1])


@dataclass
class Evaluation:
    """Per-pair scores of every method and metric, plus the timings of the model."""

    scores: dict[str, dict[str, list[Tensor]]]  # method -> metric -> per-clip (T,) scores
    background: list[Tensor] = field(default_factory=list)  # per clip (T,): share of SSIM windows in the background
    init_ms: list[float] = field(default_factory=list)  # one per clip
    inference_ms: list[float] = field(default_factory=list)  # one per rendered frame
    clips: list[str] = field(default_factory=list)
    examples: list[PairBatch] = field(default_factory=list)  # first pair of each clip, for the grid

    @property
    def n_pairs(self) -> int:
        return len(self.inference_ms)  # one rendered frame per pair

    def _values(self, method: str, name: str) -> Tensor:
        parts = self.scores[method][name]
        return torch.cat(parts) if parts else torch.empty(0)

    def mean(self, method: str, name: str) -> float | None:
        """Mean over the scored pairs; None when no pair could be scored."""
        values = self._values(method, name)
        ok = torch.isfinite(values)
        return float(values[ok].mean()) if ok.any() else None

    def unscored(self, method: str, name: str) -> float:
        """Fraction of pairs the metric could not score (NME: no face found in the output)."""
        values = self._values(method, name)
        return float((~torch.isfinite(values)).float().mean()) if len(values) else 0.0


def target_frames(frame_index: np.ndarray, fps: float, rate: float = 1.0) -> list[int]:
    """Stored frames taken as targets: the first one at or after each whole 1/rate seconds after
    the source (stored frame 0). frame_index: (T,) source-video index of each stored frame."""
    if fps <= 0 or len(frame_index) < 2:
        return []
    times = (np.asarray(frame_index) - frame_index[0]) / fps * rate  # in target periods
    targets, k = [], 1
    for i, t in enumerate(times):
        if t >= k - 1e-6:
            targets.append(i)
            k = math.floor(t + 1e-6) + 1
    return targets


def select_clips(dataset: PairDataset, max_clips: int | None, per_identity: int = 1) -> list[ClipRecord]:
    """Clips with at least one target, the first `per_identity` of each identity by clip id (the
    paper: one), at most max_clips."""
    chosen: dict[str, list[ClipRecord]] = {}
    for clip in sorted(dataset.clips, key=lambda c: c.clip_id):
        picked = chosen.setdefault(clip.identity, [])
        if len(picked) < per_identity and clip.num_frames > 1 and clip.fps > 0:
            picked.append(clip)
    clips = sorted((c for picked in chosen.values() for c in picked), key=lambda c: c.clip_id)
    return clips[:max_clips] if max_clips is not None else clips


def _stack(frames: list[dict[str, Tensor]], key: str) -> Tensor:
    return torch.stack([f[key] for f in frames])


@torch.no_grad()
def evaluate(
    model: BilayerModel, data: str | Path, metrics: dict[str, PairMetric], cfg: EvalConfig = EvalConfig()
) -> Evaluation:
    """Run the protocol on the `cfg.split` clips of dataset `data` with the given metrics."""
    dataset = PairDataset(data, cfg.split, DatasetConfig(
        image_size=model.cfg.image_size, flip_probability=0.0, test_fraction=cfg.test_fraction))
    clips = select_clips(dataset, cfg.max_clips, cfg.clips_per_identity)
    avatar = Avatar(model)
    names = [*metrics, *(SSIM_REGIONS if "ssim" in metrics else ())]
    result = Evaluation(scores={m: {name: [] for name in names} for m in METHODS})
    for clip in clips:
        with ClipReader(dataset.root / clip.file) as reader:
            keypoints = reader.array("keypoints")  # (T, 68, 2)
            indices = target_frames(reader.array("frame_index"), clip.fps, cfg.target_rate)
            if not indices:
                continue
            source = dataset._frame(reader, keypoints[0], 0, False, "source")
            targets = [dataset._frame(reader, keypoints[i], i, False, "target") for i in indices]
        batch = _run_clip(avatar, clip.clip_id, source, targets, result, cfg.mask_threshold)
        background = background_windows(batch.target_mask)  # (T, H - 10, W - 10)
        for method, output in (("ours", batch.ours), ("copy_source", batch.source)):
            scores = {name: metric(output, batch.target, batch.target_keypoints) for name, metric in metrics.items()}
            if "ssim" in metrics:
                scores.update(zip(SSIM_REGIONS, ssim_by_region(output, batch.target, background)))
            for name, values in scores.items():  # (T,) each
                result.scores[method][name].append(values.float().cpu())
        result.background.append(background.float().mean(dim=(1, 2)))
        result.clips.append(clip.clip_id)
        result.examples.append(batch.first())
    if not result.clips:
        raise InputError(
            f"{data}: no clip of split {cfg.split!r} has a frame {1 / cfg.target_rate:g} s after its first"
        )
    return result


def _cut(mask: Tensor, threshold: float | None) -> Tensor:
    """The mask the images are cut with: as it is, or 0/1 at `threshold`."""
    return mask if threshold is None else (mask >= threshold).to(mask.dtype)


def _run_clip(
    avatar: Avatar, clip_id: str, source: dict[str, Tensor], targets: list[dict[str, Tensor]], result: Evaluation,
    mask_threshold: float | None,
) -> PairBatch:
    """Init the avatar on the source, render every target one frame at a time (both timed; the
    first clip is run once untimed before, so one-off allocation costs stay out of the medians).
    Every mask is cut at `mask_threshold` (None: used as it is)."""
    init_args = (source["source_image"][None], source["source_landmarks"][None],
                 source["source_keypoints"][None], source["source_mask"][None])
    if not result.init_ms:
        avatar.init(*init_args)
        avatar.render(targets[0]["target_keypoints"][None])
    start = time.perf_counter()
    avatar.init(*init_args)
    result.init_ms.append(1000 * (time.perf_counter() - start))
    outputs = []
    for target in targets:
        start = time.perf_counter()
        image, mask = avatar.render(target["target_keypoints"][None])  # (1, 3, H, W), (1, 1, H, W)
        result.inference_ms.append(1000 * (time.perf_counter() - start))
        outputs.append(apply_mask(image, _cut(mask, mask_threshold))[0])
    n = len(targets)
    masked_source = apply_mask(source["source_image"], _cut(source["source_mask"], mask_threshold))  # (3, H, W)
    target_mask = _cut(_stack(targets, "target_mask"), mask_threshold)
    return PairBatch(
        clip_id=clip_id,
        source=masked_source.expand(n, -1, -1, -1),
        target=apply_mask(_stack(targets, "target_image"), target_mask),
        target_mask=target_mask,
        target_keypoints=_stack(targets, "target_keypoints"),
        ours=torch.stack(outputs),
    )
