"""Typed training configuration (paper Sec. 3.5, App. A.1), loaded from YAML with overrides.

A config file names a model preset and overrides its fields:

    model_size: small            # small | medium | large | baseline (bilayer.config.PRESETS)
    model: {image_size: 64}      # ModelConfig fields on top of the preset
    loss: {adversarial: 0.5}     # LossWeights
    base: {iterations: 100, batch_size: 8}

Unknown keys and wrong types are rejected with the key (and file) named. The resolved config
(every field, preset applied) is what a run saves and what `--dry-run` prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bilayer.config import PRESETS, ConfigError, ModelConfig, from_dict, read_yaml, to_dict, with_overrides
from bilayer.data.config import DatasetConfig
from bilayer.losses import LossWeights


@dataclass(frozen=True)
class StageConfig:
    iterations: int
    batch_size: int  # global: split evenly over the processes

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for every network (Sec. 3.5, App. A.1)."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class PerceptualConfig:
    """The active perceptual networks (Eqs. 4-5); a configured weight file that is missing is an error.

    ImageNet VGG19 weights cannot be shipped: with `imagenet: none` the Eq. 4 term is off and the
    run says so in its log and checkpoint metadata; `imagenet: dlib_frame` keeps a whole-image
    term with the one pretrained network that ships, dlib's face ResNet, run on the whole frame
    (not ImageNet features: a stand-in, named as such in the log). dlib's face ResNet (weights
    committed) stands in for VGGFace in Eq. 5 unless `face: vggface` with a weight file is chosen.
    """

    imagenet: Literal["vgg19", "dlib_frame", "none"] = "none"
    imagenet_weights: str | None = None  # torchvision's vgg19-dcbb9e9d.pth (dlib_frame: None = bundled)
    face: Literal["dlib_face", "vggface", "none"] = "dlib_face"
    face_weights: str | None = None  # None with dlib_face: bilayer/assets/dlib_face_resnet_v1.pt


@dataclass(frozen=True)
class TrainConfig:
    model_size: Literal["small", "medium", "large", "baseline"] = "medium"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    data: DatasetConfig = field(default_factory=DatasetConfig)  # training pairs, at model.image_size
    # Batch sizes of the paper (Sec. 3.5); it does not report iteration counts.
    base: StageConfig = field(default_factory=lambda: StageConfig(iterations=500_000, batch_size=48))
    updater: StageConfig = field(default_factory=lambda: StageConfig(iterations=100_000, batch_size=32))
    # Sec. 3.3: also train G_upd inside the base stage (its M steps between G_tex and the render,
    # gradients through all networks) - "possible, and can lead to better quality", the paper
    # says, set aside there for memory. Off: the paper's two stages.
    joint_updater: bool = False
    standing_stats_batches: int = 500  # App. A.1
    num_workers: int = 2  # data-loading processes per training process
    checkpoint_every: int = 1000  # iterations between writes of checkpoints/last.pt
    log_every: int = 50  # iterations between TensorBoard/JSON scalar logs (averaged)
    image_every: int = 1000  # iterations between TensorBoard image grids
    seed: int = 0
    # autocast: "auto" is bf16 where the device computes it natively (`hardware.native_bf16`), else
    # fp32; fp16 was unstable in the paper (A.3)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for name in ("standing_stats_batches", "checkpoint_every", "log_every", "image_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.data.split == "test":
            raise ValueError("data.split must be train or all: the test split's identities are held out")
        if (self.updater.iterations > 0 or self.joint_updater) and self.model.upd_steps < 1:
            # With M = 0 the updater stage has nothing to train (its loss has no gradient).
            raise ValueError(
                f"model.upd_steps must be >= 1 when updater.iterations > 0 or joint_updater, got {self.model.upd_steps}"
            )


def train_config(data: dict[str, Any], overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig from a plain dict: `key=value` overrides (values as YAML), then the model preset."""
    data = with_overrides(TrainConfig, data, list(overrides))
    size = data.get("model_size", TrainConfig.model_size)
    if size not in PRESETS:
        raise ConfigError(f"TrainConfig.model_size: {size!r} is not one of {tuple(PRESETS)}")
    # Nested blocks given in part keep the defaults of their other fields; the model block sits
    # on top of its preset instead.
    defaults = to_dict(TrainConfig())
    defaults["model"] = PRESETS[size]
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            data[key] = {**defaults[key], **value}
    data.setdefault("model", defaults["model"])
    return from_dict(TrainConfig, data)


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Load a YAML training config; every problem is one line naming the file."""
    data = read_yaml(path)
    try:
        return train_config(data, list(overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
