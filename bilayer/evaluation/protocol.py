"""The paper's evaluation protocol (Sec. 4, App. B.2 Table 2) on a dataset written by `bilayer preprocess`.

"For evaluation, we use a subset of 50 test videos with different identities. The first frame in
each sequence is used as a source. Target frames are taken sequentially at 1 FPS." Per clip:

1. the avatar is initialized once from the clip's first stored frame (timed: Init ms);
2. each target (the first stored frame at or after each whole second of the clip) is rendered
   from its keypoints, one frame at a time (timed: Inf ms);
3. every registered metric scores the output against the target.

Images are compared on the foreground, as the model is trained and the official code evaluates
(background blended to black, Sec. 3.4). Which mask cuts which image is `EvalConfig.mask`
(`MASK_MODES`): "target" (the default: every image with the target's dataset mask, the official
code's one mask for output and target taken from the ground truth, so that a predicted silhouette
can neither help nor hurt), "own" (the output with its predicted mask, the target and the copied
source with their dataset masks: the silhouette is scored with the image) or "predicted" (every
image with the predicted mask: the official code's `inf_apply_masks`). The silhouette itself is scored by
`mask_iou` in every mode. `EvalConfig.mask_threshold` cuts every mask (the target's, the source's
and the predicted one) into 0/1 at a threshold: sharp foregrounds like those of the paper's
segmentation model [15], where soft masks (MediaPipe's confidences) leave a few percent of the
static background in both the target and the copied source.

The copy-source baseline (output = the source frame, cut as the mode says) is scored on the same
pairs with the same metrics, so no number is read alone; `Evaluation.versus_copy_source` says
whether a difference is more than noise (standard error over clips). With SSIM, both are also scored
on the windows wholly in the target's background and on the rest (`SSIM_REGIONS`), which shows
how much of a gap is the predicted mask's.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from bilayer.data.config import DatasetConfig, Split
from bilayer.data.dataset import PairDataset
from bilayer.data.frame import Frame
from bilayer.data.store import ClipReader, ClipRecord
from bilayer.errors import InputError
from bilayer.metrics.registry import PairMetric
from bilayer.metrics.silhouette import mask_iou
from bilayer.metrics.ssim import background_windows, ssim_by_region
from bilayer.nets import BilayerModel, apply_mask
from bilayer.runtime import Avatar

METHODS = ("ours", "copy_source")
SSIM_REGIONS = ("ssim_foreground", "ssim_background")  # scored alongside "ssim"
MaskMode = Literal["target", "own", "predicted"]
#: What each `EvalConfig.mask` cuts the images with (the JSON's and the table's note).
MASK_MODES: dict[str, str] = {
    "target": "output, source and target all cut with the target's dataset mask (silhouettes not scored: mask_iou)",
    "own": "output cut with its predicted mask, target and source with their dataset masks",
    "predicted": "output, source and target all cut with the predicted mask (the official code)",
}


@dataclass(frozen=True)
class EvalConfig:
    split: Split = "test"  # `evaluation_split` chooses it for a checkpoint and a dataset
    test_fraction: float = DatasetConfig.test_fraction  # the training run's, for its test split
    max_clips: int | None = 50  # the paper's 50 test videos, one per identity
    clips_per_identity: int = 1  # more for test sets with few identities
    target_rate: float = 1.0  # targets per second of video (1 FPS)
    mask: MaskMode = "target"  # which mask cuts which image (MASK_MODES)
    mask_threshold: float | None = None  # None: soft masks; t: every mask cut to (mask >= t)

    def __post_init__(self) -> None:
        if self.mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {', '.join(MASK_MODES)}, got {self.mask!r}")
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
    ours_mask: Tensor  # (T, 1, H, W) the predicted masks (cut if mask_threshold)
    source_mask: Tensor  # (T, 1, H, W) the source's dataset mask, the copy-source silhouette

    def first(self) -> "PairBatch":
        return PairBatch(self.clip_id, *(t[:1] for t in (self.source, self.target, self.target_mask,
                                                          self.target_keypoints, self.ours, self.ours_mask,
                                                          self.source_mask)))


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

    def versus_copy_source(self, name: str, higher_is_better: bool) -> dict[str, float] | None:
        """Ours minus copy source on the pairs both scored: the mean difference, its standard error
        with each clip's pairs as one cluster (they share a source frame), and the share of pairs
        on which ours is better. None when no pair was scored by both."""
        per_clip = []  # (T_c,) finite differences of each clip that has one
        for ours, copy in zip(self.scores["ours"][name], self.scores["copy_source"][name]):
            d = (ours - copy).double()
            if torch.isfinite(d).any():
                per_clip.append(d[torch.isfinite(d)])
        if not per_clip:
            return None
        diffs = torch.cat(per_clip)  # (N,)
        mean, n, k = diffs.mean(), len(diffs), len(per_clip)
        # Cluster-robust standard error of a mean: sqrt(k / (k - 1) * sum_c (sum_p (d_p - mean))^2) / n.
        residual = torch.stack([(d - mean).sum() for d in per_clip])
        se = float((residual.pow(2).sum() * k / (k - 1)).sqrt() / n) if k > 1 else math.nan
        better = diffs > 0 if higher_is_better else diffs < 0
        return {"difference": float(mean), "standard_error": se, "pairs_better": float(better.double().mean())}


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


def evaluation_split(meta: dict, data: str | Path) -> tuple[Split, float, str]:
    """(split, test_fraction, why) for a checkpoint's metadata and the dataset `data`: the run's
    test split when `data` is the dataset it was trained on (its identities held out by the
    run's test_fraction, or by the data's recorded splits), every clip otherwise."""
    trained_on, data_cfg = meta.get("dataset"), meta.get("train_config", {}).get("data", {})
    test_fraction = data_cfg.get("test_fraction", DatasetConfig.test_fraction)
    if trained_on is None:
        return "all", test_fraction, "the checkpoint does not record its training data: every clip"
    if Path(trained_on) != Path(data).resolve():
        return "all", test_fraction, f"not the checkpoint's training data ({trained_on}): every clip"
    if data_cfg.get("split") == "all":
        return "all", test_fraction, "the checkpoint's training data, trained on every clip: every clip (none unseen)"
    return "test", test_fraction, f"the checkpoint's training data: its test split (test_fraction {test_fraction:g})"


@torch.no_grad()
def evaluate(
    model: BilayerModel, data: str | Path, metrics: dict[str, PairMetric], cfg: EvalConfig = EvalConfig()
) -> Evaluation:
    """Run the protocol on the `cfg.split` clips of dataset `data` with the given metrics."""
    dataset = PairDataset(data, DatasetConfig(split=cfg.split, test_fraction=cfg.test_fraction),
                          image_size=model.cfg.image_size, profile=model.cfg.preprocessing)
    clips = select_clips(dataset, cfg.max_clips, cfg.clips_per_identity)
    avatar = Avatar(model, precision="fp32")  # scores that do not depend on the CPU
    names = [*metrics, *(SSIM_REGIONS if "ssim" in metrics else ()), "mask_iou"]
    result = Evaluation(scores={m: {name: [] for name in names} for m in METHODS})
    for clip in clips:
        with ClipReader(dataset.root / clip.file) as reader:
            indices = target_frames(reader.array("frame_index"), clip.fps, cfg.target_rate)
        if not indices:
            continue
        source, targets = dataset.frame(clip, 0), [dataset.frame(clip, i) for i in indices]
        batch = _run_clip(avatar, clip.clip_id, source, targets, result, cfg)
        background = background_windows(batch.target_mask)  # (T, H - 10, W - 10)
        outputs = (("ours", batch.ours, batch.ours_mask), ("copy_source", batch.source, batch.source_mask))
        for method, output, silhouette in outputs:
            scores = {name: metric(output, batch.target, batch.target_keypoints) for name, metric in metrics.items()}
            if "ssim" in metrics:
                scores.update(zip(SSIM_REGIONS, ssim_by_region(output, batch.target, background)))
            scores["mask_iou"] = mask_iou(silhouette, batch.target_mask)
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


def _run_clip(avatar: Avatar, clip_id: str, source: Frame, targets: list[Frame], result: Evaluation,
              cfg: EvalConfig) -> PairBatch:
    """Initialize the avatar from the source, render every target one frame at a time (both
    timed; the first clip is run once untimed before, so one-off allocation costs stay out of the
    medians), then cut the images as `cfg.mask` says, every mask cut at `cfg.mask_threshold` first."""
    if not result.init_ms:
        avatar.initialize(source.batch())
        avatar.render(targets[0].keypoints[None])
    start = time.perf_counter()
    avatar.initialize(source.batch())
    result.init_ms.append(1000 * (time.perf_counter() - start))
    target = Frame(*(torch.stack(fields) for fields in zip(*targets)))  # (T, ...) each
    images, masks = [], []
    for keypoints in target.keypoints:
        start = time.perf_counter()
        image, mask = avatar.render(keypoints[None])  # (1, 3, H, W), (1, 1, H, W)
        result.inference_ms.append(1000 * (time.perf_counter() - start))
        images.append(image)
        masks.append(mask)
    n = len(targets)
    predicted = _cut(torch.cat(masks), cfg.mask_threshold)  # (T, 1, H, W)
    target_mask = _cut(target.mask, cfg.mask_threshold)
    source_mask = _cut(source.mask, cfg.mask_threshold).expand(n, -1, -1, -1)
    cut_ours, cut_source, cut_target = {
        "own": (predicted, source_mask, target_mask),
        "target": (target_mask, target_mask, target_mask),
        "predicted": (predicted, predicted, predicted),
    }[cfg.mask]
    return PairBatch(
        clip_id=clip_id,
        source=apply_mask(source.image.expand(n, -1, -1, -1), cut_source),
        target=apply_mask(target.image, cut_target),
        target_mask=target_mask,
        target_keypoints=target.keypoints,
        ours=apply_mask(torch.cat(images), cut_ours),
        ours_mask=predicted,
        source_mask=source_mask,
    )
