"""Checkpoints = weights + the config that built them (never pickled modules), versioned.

Layout of a `.pt` file (a dict of plain tensors and JSON-like values, loadable with
`torch.load(weights_only=True)`):

    {"format": "bilayer", "version": 2,
     "model_config": {...ModelConfig fields...},
     "model": {state dict of BilayerModel: the avatar's networks, no `module.`/`_orig_mod.` prefixes},
     "discriminator": {state dict of the training-only discriminator} (when the file has one),
     "meta": {...free-form run metadata: stage, iteration, active perceptual nets, the resolved
              train_config (loss weights included), the dataset trained on...},
     ...optional training state under other keys (a training `last.pt`: progress, optimizers,
        scalers, rng)}

An *inference* checkpoint (`inference_checkpoint`, e.g. the shipped demo model) keeps only the
networks that avatars use, optionally with float16 weights; `meta["networks"]` lists what a file
holds when it is not all of `nets.NETWORKS` and `load_model` accepts it (the others stay untrained).

Older versions are migrated when read (`MIGRATIONS`), so every checkpoint ever written loads:
version 1 kept the discriminator inside "model" (`discriminator.*` keys) and recorded a run's
starting weights as meta["init"].

Writes are atomic (temporary file in the same folder + fsync + os.replace), so an interrupted
save never leaves a truncated checkpoint in place of a good one.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilayer.assets import DEMO_CHECKPOINT
from bilayer.config import ConfigError, ModelConfig, from_dict, to_dict
from bilayer.errors import InputError
from bilayer.io.files import atomic_path
from bilayer.nets import NETWORKS, BilayerModel

FORMAT, VERSION = "bilayer", 2


def _from_version_1(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The discriminator out of "model" into its own entry; meta["init"] -> meta["weights_from"]."""
    prefix = "discriminator."
    model = {k: v for k, v in ckpt["model"].items() if not k.startswith(prefix)}
    discriminator = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    meta = dict(ckpt.get("meta", {}))
    if "networks" in meta:
        meta["networks"] = [n for n in meta["networks"] if n != "discriminator"]
    if "init" in meta:
        meta["weights_from"] = meta.pop("init")
    out = {**ckpt, "version": 2, "model": model, "meta": meta}
    if discriminator:
        out["discriminator"] = discriminator
    return out


#: version -> the function that turns a checkpoint of that version into the next one.
MIGRATIONS = {1: _from_version_1}


def clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in nested dicts, lists and tuples: about the size of their file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` atomically, on disk (fsync) before it replaces an older file; a full
    disk is a one-line `DiskFull` (bilayer.io.files) naming `path` and about the file's size."""
    with atomic_path(path, _tensor_bytes(obj)) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None,
                    discriminator: nn.Module | None = None, **state: Any) -> None:
    """Save `model` (a BilayerModel, possibly wrapped) with its config, `meta`, the training's
    `discriminator` when given and extra `state`."""
    inner = getattr(model, "module", model)
    extra = {"discriminator": clean_state_dict(discriminator)} if discriminator is not None else {}
    atomic_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "model_config": to_dict(inner.cfg),
            "model": clean_state_dict(inner),
            "meta": meta or {},
            **extra,
            **state,
        },
        path,
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint dict; every failure is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt archives
        raise InputError(f"{path}: not a readable checkpoint (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path}: not a bilayer checkpoint")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise InputError(f"{path}: checkpoint has no {key!r}")
    version = ckpt.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise InputError(f"{path}: checkpoint version {version!r} is not supported (this bilayer reads 1 to {VERSION})")
    while ckpt["version"] < VERSION:
        ckpt = MIGRATIONS[ckpt["version"]](ckpt)
    return ckpt


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """`checkpoint`, or the shipped demo model when None (a one-line error if it is not there)."""
    if checkpoint is not None:
        return Path(checkpoint)
    if not DEMO_CHECKPOINT.is_file():
        raise InputError(f"{DEMO_CHECKPOINT}: the demo model is not in this installation; pass --checkpoint C")
    return DEMO_CHECKPOINT


def updater_trained(meta: dict[str, Any]) -> bool:
    """False for a checkpoint of a run that has not trained G_upd yet (the base stage, and base.pt,
    written at updater iteration 0, of a two-stage run without a --weights updater): M steps of an
    untrained updater scramble the texture. The trainer records it (`meta["updater_trained"]`);
    files written before that are judged by their stage."""
    if "updater_trained" in meta:
        return bool(meta["updater_trained"])
    stage, iteration = meta.get("stage"), meta.get("iteration")
    return not (stage == "base" or (stage == "updater" and iteration == 0))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[BilayerModel, dict[str, Any]]:
    """Build the model from the checkpoint's config and load its weights. Returns (model, ckpt).

    A checkpoint whose updater is untrained gets `upd_steps = 0`: its avatars use G_tex's texture.
    """
    ckpt = read_checkpoint(path)
    try:
        cfg = from_dict(ModelConfig, ckpt["model_config"])
    except ConfigError as e:
        raise InputError(f"{path}: {e}") from None
    if not updater_trained(ckpt.get("meta", {})):
        cfg = replace(cfg, upd_steps=0)
    model = BilayerModel(cfg)
    networks = ckpt.get("meta", {}).get("networks")
    try:
        if networks is None:
            model.load_state_dict(ckpt["model"])
        else:  # an inference checkpoint: every key of the networks it names must be there
            missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
            missing = [k for k in missing if k.split(".")[0] in networks]
            if missing or unexpected:
                raise RuntimeError(f"{'missing' if missing else 'unexpected'} key {(missing or unexpected)[0]!r}")
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"{path}: weights do not match the model config ({first})") from None
    return model.to(map_location), ckpt


def inference_checkpoint(src: str | Path, dst: str | Path, half: bool = True, meta: dict[str, Any] | None = None) -> Path:
    """Write the avatar networks of checkpoint `src` to `dst` (no discriminator, no training
    state), with float16 parameters if `half` (buffers such as BatchNorm statistics and spectral
    norm vectors stay float32); `meta` is merged into the source's metadata."""
    ckpt = read_checkpoint(src)
    params = {name for name, _ in BilayerModel(from_dict(ModelConfig, ckpt["model_config"])).named_parameters()}
    weights = {key: value.half() if half and key in params else value for key, value in ckpt["model"].items()}
    networks = ckpt.get("meta", {}).get("networks", list(NETWORKS))
    meta = {**ckpt.get("meta", {}), **(meta or {}), "networks": networks,
            "weights_dtype": "float16" if half else "float32"}
    atomic_save({"format": FORMAT, "version": VERSION, "model_config": ckpt["model_config"], "model": weights,
                 "meta": meta}, dst)
    return Path(dst)
