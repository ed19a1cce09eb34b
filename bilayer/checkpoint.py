"""Checkpoints = weights + the config that built them (never pickled modules).

Layout of a `.pt` file (a dict of plain tensors and JSON-like values, loadable with
`torch.load(weights_only=True)`):

    {"format": "bilayer", "version": 1,
     "model_config": {...ModelConfig fields...},
     "model": {state dict of BilayerModel, no `module.`/`_orig_mod.` prefixes},
     "meta": {...free-form run metadata: stage, iteration, active perceptual nets...},
     ...optional training state under other keys (optimizers, RNG, loss weights)}

Writes are atomic (temporary file in the same folder + fsync + os.replace), so an interrupted
save never leaves a truncated checkpoint in place of a good one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilayer.config import ConfigError, ModelConfig, from_dict, to_dict
from bilayer.errors import InputError
from bilayer.nets import BilayerModel

FORMAT, VERSION = "bilayer", 1


def clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None, **state: Any) -> None:
    """Save `model` (a BilayerModel, possibly wrapped) with its config, `meta` and extra `state`."""
    inner = getattr(model, "module", model)
    atomic_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "model_config": to_dict(inner.cfg),
            "model": clean_state_dict(inner),
            "meta": meta or {},
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
    if ckpt.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise InputError(f"{path}: checkpoint has no {key!r}")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[BilayerModel, dict[str, Any]]:
    """Build the model from the checkpoint's config and load its weights. Returns (model, ckpt)."""
    ckpt = read_checkpoint(path)
    try:
        cfg = from_dict(ModelConfig, ckpt["model_config"])
    except ConfigError as e:
        raise InputError(f"{path}: {e}") from None
    model = BilayerModel(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"{path}: weights do not match the model config ({first})") from None
    return model.to(map_location), ckpt
