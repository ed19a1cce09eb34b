"""Typed configuration: frozen dataclasses with the paper's values as defaults.

YAML is only a serialization of these dataclasses. Loading rejects unknown keys (naming the key
and the file) and wrong types, so a typo in a config never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bilayer.errors import InputError

T = TypeVar("T")

#: How a model's inputs are made from a photo or frame (crop rule, keypoint normalisation, landmark
#: image, mask erosion): this package's own preprocessing, or the authors' released code's
#: (docs/official_weights.md). Recorded in every checkpoint (ModelConfig.preprocessing).
Profile = Literal["bilayer", "official"]
PROFILES: tuple[str, ...] = typing.get_args(Profile)


class ConfigError(InputError):
    """A config file or override that does not match its dataclass."""


def _check_value(cls_name: str, key: str, tp: Any, value: Any) -> Any:
    """Coerce/validate one field value against its annotation."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{cls_name}.{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where=f"{cls_name}.{key}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(cls_name, key, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{cls_name}.{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{cls_name}.{key}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{cls_name}.{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{cls_name}.{key}: expected {len(args)} items, got {len(value)}")
            items = [_check_value(cls_name, key, a, v) for a, v in zip(args, value)]
        else:
            item_tp = args[0] if args else Any
            items = [_check_value(cls_name, key, item_tp, v) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{cls_name}.{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{cls_name}.{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{cls_name}.{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{cls_name}.{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and wrong types."""
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _check_value(where, k, hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a (nested) config dataclass, tuples as lists (YAML/JSON friendly)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; problems are one line naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into `cls`; every problem is reported with the file name."""
    data = read_yaml(path)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def read_recorded_settings(path: Path, key: str | None = None) -> dict[str, Any] | None:
    """The settings a JSON file `path` records (its `key` entry, when given); None when the file
    does not exist, a one-line `InputError` naming it when it cannot be read."""
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        recorded = recorded if key is None else recorded[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: cannot read the recorded settings ({e!r})") from None
    if not isinstance(recorded, dict):
        raise InputError(f"{path}: cannot read the recorded settings (not a JSON object)")
    return recorded


def check_recorded_settings(path: Path, settings: dict[str, Any], key: str | None = None,
                            implicit: dict[str, Any] | None = None) -> bool:
    """Whether the JSON file `path` (its `key` entry, when given) already records `settings`: False
    when there is no record yet, an `InputError` naming every difference when it records others
    (the folder's finished work was made with them). A key of `implicit` missing on either side
    reads as its value there (settings gained after a folder was made)."""
    recorded = read_recorded_settings(path, key)
    if recorded is None:
        return False
    implicit = implicit or {}
    changed = config_changes({**implicit, **recorded}, {**implicit, **settings})
    if changed:
        raise InputError(f"{path.parent}: made with other settings ({'; '.join(changed)}); "
                         f"use a new folder or the recorded settings ({path})")
    return True


def with_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` (the plain-dict form of `cls`, possibly partial) with `a.b.c=value` overrides set.

    Values are parsed as YAML; every part of a key is checked against the dataclass fields of
    `cls`. Missing nested blocks are created, so the result may still be partial; `from_dict`
    checks the values.
    """
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        node, tp = data, cls
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise ConfigError(f"override {item!r}: unknown key {part!r} (known: {', '.join(sorted(names))})")
            if i == len(parts) - 1:
                node[part] = yaml.safe_load(raw)
                break
            tp = typing.get_type_hints(tp)[part]
            child = node.get(part, {})
            if not dataclasses.is_dataclass(tp) or not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section with keys")
            node[part] = node = dict(child)
    return data


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Config dataclass `cfg` with `a.b.c=value` overrides (values as YAML) applied."""
    return from_dict(type(cfg), with_overrides(type(cfg), to_dict(cfg), overrides))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the five networks (paper Sec. 3.1, 3.5, App. A.2; Figs. 10-14).

    Channel counts follow the rule of A.2: `*_channels` at the highest resolution, doubled at each
    halving of resolution, capped at `*_max_channels`.
    """

    image_size: int = 256
    num_keypoints: int = 68
    generator_input_size: int = 4  # both generators start from a 4x4 tensor (Figs. 10-11)
    embedding_size: int = 8  # spatial size of the embeddings (Fig. 12)
    # Embedder (Fig. 12): encoder channels 64 -> 512.
    emb_channels: int = 64
    emb_max_channels: int = 512
    # Texture generator G_tex (Fig. 10): 64 -> 512; its block outputs set the embedding channels.
    tex_channels: int = 64
    tex_max_channels: int = 512
    # Inference generator G (Fig. 11): the medium model is half capacity of G_tex.
    inf_channels: int = 32
    inf_max_channels: int = 256
    kp_hidden: int = 256  # all linear layers but the last are 256-d (A.2)
    kp_layers: int = 4  # 136 -> 256 -> 256 -> 256 -> C*4*4
    # Matrix-decomposition projections (A.2): embeddings resized to this size before flattening.
    tex_projection_size: int = 32
    inf_projection_size: int = 16
    # Discriminator D (Fig. 13).
    dis_channels: int = 64
    dis_max_channels: int = 512
    dis_output_size: int = 8
    # Texture updater G_upd (Fig. 14): bottleneck 128 channels at 128x128, 8 residual blocks.
    upd_channels: int = 64
    upd_max_channels: int = 128
    upd_num_blocks: int = 8
    upd_steps: int = 4  # unrolling depth M (Sec. 3.5)
    # Ablation switches (Table 1): the paper's baseline turns both off.
    ada_spade: bool = True  # AdaSPADE in G_tex; when off: AdaBN + per-pixel biases
    ada_skip: bool = True  # skip 1x1 convs predicted from the embeddings in both generators
    spectral_norm: bool = True  # on every conv and linear layer (Sec. 3.5)
    leaky_slope: float = 0.2
    bn_eps: float = 1e-5  # the authors' released code: 1e-7
    landmark_channels: int = 3  # the landmark ("stickman") image is RGB
    # Options that reproduce the authors' released code exactly (`bilayer convert official`,
    # docs/official_weights.md); the defaults are this package's own layout.
    # Which embedding predicts which adaptive tensor (App. A.2): "block": embedding k -> block k's
    # own norms and skip; "official": parameters handed out in module order, so embedding k ->
    # block k's norm2 and skip and block k+1's norm1 (the output norm after the last block),
    # hidden width min(emb_channels * 2^(K-k), emb_max_channels).
    projection_layout: Literal["block", "official"] = "block"
    embedding_tap: Literal["output", "features"] = "output"  # block outputs, or after its first conv + act
    source_average: Literal["embeddings", "encoder"] = "embeddings"  # where N source frames are averaged
    guide_loss_scale: float = 1.0  # L_upd = scale * sum of squares (Eq. 7; official: 0.5)
    align_corners: bool = False  # grid_sample of the texture (official code with torch >= 1.3: False)
    preprocessing: Profile = "bilayer"  # how inputs are made (Profile above)

    def __post_init__(self) -> None:
        for name in ("image_size", "generator_input_size", "embedding_size", "dis_output_size",
                     "tex_projection_size", "inf_projection_size", "kp_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not _halves_to(self.image_size, self.generator_input_size):
            raise ValueError(
                f"image_size {self.image_size} must be a power-of-two multiple of "
                f"generator_input_size {self.generator_input_size}"
            )
        for name in ("embedding_size", "dis_output_size"):  # reached by halving from image_size
            if not _halves_to(self.image_size, getattr(self, name)):
                raise ValueError(
                    f"{name} {getattr(self, name)} must be image_size {self.image_size} divided by a power of two"
                )
        if self.embedding_size == self.image_size:
            raise ValueError("embedding_size must be smaller than image_size")
        if self.upd_steps < 0:
            raise ValueError("upd_steps must be >= 0")
        self._check_projections()

    def _check_projections(self) -> None:
        """The rule of `bilayer.nets.projector.Projector`, checked before any network is built.

        Embedding k (C_k channels, resized to S x S) is viewed as one row per output channel of
        each adaptive layer it predicts: in the "block" layout block k's input channels (its
        adaptive norm1, blocks after the first) and output channels; in the "official" layout
        block k's output channels only. So C_k * S * S must divide by each.
        """
        emb = self.embedding_channels
        for name, generator, base, cap in (
            ("tex_projection_size", "texture", self.tex_channels, self.tex_max_channels),
            ("inf_projection_size", "inference", self.inf_channels, self.inf_max_channels),
        ):
            s, ch = getattr(self, name), self.generator_channels(base, cap)
            for k, c in enumerate(emb):
                block_rows = (ch[k], ch[k + 1]) if k and self.projection_layout == "block" else (ch[k + 1],)
                for rows in block_rows:
                    if c * s * s % rows:
                        raise ValueError(
                            f"{name} {s}: embedding {k} ({c}x{s}x{s} values) cannot be split into "
                            f"{rows} rows (one per channel of the {generator} generator's block {k})"
                        )

    @property
    def num_blocks(self) -> int:
        """Number of upsampling blocks in each generator (= number of embeddings K)."""
        return (self.image_size // self.generator_input_size).bit_length() - 1

    def encoder_channels(self, base: int, cap: int, out_size: int) -> list[int]:
        """Channels at HxW, H/2 x W/2, ..., out_size: `base` at HxW, x2 per halving, <= `cap`."""
        halvings = (self.image_size // out_size).bit_length() - 1
        return [min(base * 2**i, cap) for i in range(halvings + 1)]

    def generator_channels(self, base: int, cap: int) -> list[int]:
        """Channels of a generator at 4x4, 8x8, ..., HxW (the same rule, read upwards)."""
        return self.encoder_channels(base, cap, self.generator_input_size)[::-1]

    @property
    def embedding_channels(self) -> list[int]:
        """Channels of the K embeddings = output channels of the texture generator's blocks."""
        return self.generator_channels(self.tex_channels, self.tex_max_channels)[1:]

    @property
    def projection_hidden(self) -> list[int]:
        """Hidden width of the projection heads of embedding k (both generators): C_k, or in the
        "official" layout min(emb_channels * 2^(K - k), emb_max_channels)."""
        if self.projection_layout == "block":
            return self.embedding_channels
        return [min(self.emb_channels * 2 ** (self.num_blocks - k), self.emb_max_channels)
                for k in range(self.num_blocks)]


def _halves_to(size: int, target: int) -> bool:
    """Whether halving `size` zero or more times gives exactly `target`."""
    n, rest = divmod(size, target)
    return rest == 0 and n & (n - 1) == 0


#: The three model sizes of the paper (Sec. 4, Table 2) and its ablation baseline (Table 1).
#: Only the inference generator changes with size: quarter / half / full capacity.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"inf_channels": 16, "inf_max_channels": 128},
    "medium": {},
    "large": {"inf_channels": 64, "inf_max_channels": 512},
    "baseline": {"ada_spade": False, "ada_skip": False},
}

#: Per-frame cost of the inference path reported by the paper (Table 2), in GMACs.
PAPER_GMACS: dict[str, float] = {"small": 1.08, "medium": 4.32, "large": 17.3}


def model_config(name: str = "medium", **overrides: Any) -> ModelConfig:
    """A named preset (`small`, `medium`, `large`, `baseline`) with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model size {name!r} (choose from {', '.join(PRESETS)})")
    return from_dict(ModelConfig, {**PRESETS[name], **overrides}, where=f"ModelConfig[{name}]")
