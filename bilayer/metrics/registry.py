"""Evaluation metrics registered by name (NVlabs EDM's `metric_main` pattern), paper Sec. 4.

Every metric scores pairs of frames: `metric(pred, target, target_keypoints) -> (B,)`, with
pred, target (B, 3, H, W) in [-1, 1] and target_keypoints (B, 68, 2) normalized [-1, 1]
(`grid_sample(align_corners=False)` convention, as the dataset stores them). A NaN score means
"could not be scored" (NME when no face is found in the synthesized frame); callers count those.

`build_metric(name, opts)` returns the scorer, or raises `MetricUnavailable` with the reason when
its weights or packages cannot be had here; the evaluation then reports null + that reason.
Heavy dependencies (dlib, MediaPipe, the face network) are imported by the builders only.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from torch import Tensor

from bilayer.errors import MetricUnavailable

PairMetric = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MetricOptions:
    lpips_net: Literal["vgg", "alex"] = "vgg"  # the official bilayer code evaluates LPIPS on VGG16
    lpips_backbone: Path | None = None  # torchvision-format ImageNet weights of that backbone


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    build: Callable[[MetricOptions], PairMetric]


_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, higher_is_better: bool) -> Callable:
    """Decorator registering `build(opts) -> PairMetric` under `name`."""

    def decorator(build: Callable[[MetricOptions], PairMetric]) -> Callable[[MetricOptions], PairMetric]:
        _METRICS[name] = MetricSpec(name, higher_is_better, build)
        return build

    return decorator


def list_metrics() -> list[str]:
    return list(_METRICS)


def metric_spec(name: str) -> MetricSpec:
    if name not in _METRICS:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(_METRICS)})")
    return _METRICS[name]


def build_metric(name: str, opts: MetricOptions = MetricOptions()) -> PairMetric:
    """The scorer registered as `name`; raises `MetricUnavailable` with the reason."""
    return metric_spec(name).build(opts)


def _requires(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MetricUnavailable(f"needs {', '.join(missing)}: pip install 'bilayer[data]'")


@register_metric("lpips", higher_is_better=False)
def _build_lpips(opts: MetricOptions) -> PairMetric:
    from bilayer.metrics.lpips import load_lpips

    lpips = load_lpips(opts.lpips_net, opts.lpips_backbone)
    return lambda pred, target, target_keypoints: lpips(pred, target)


@register_metric("ssim", higher_is_better=True)
def _build_ssim(opts: MetricOptions) -> PairMetric:
    from bilayer.metrics.ssim import ssim

    return lambda pred, target, target_keypoints: ssim(pred, target)


@register_metric("csim", higher_is_better=True)
def _build_csim(opts: MetricOptions) -> PairMetric:
    from bilayer.metrics.csim import CSIM

    return CSIM()


@register_metric("nme", higher_is_better=False)
def _build_nme(opts: MetricOptions) -> PairMetric:
    _requires("dlib", "mediapipe", "cv2")
    from bilayer.metrics.nme import NME, PreprocessingDetector

    return NME(PreprocessingDetector())
