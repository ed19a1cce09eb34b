"""Reading perceptual-network weight files: a clear one-line `InputError`, never a random network."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from bilayer.errors import InputError


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain `{name: tensor}` dict from a torch file (loaded with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError...)
        raise InputError(f"{path}: not a readable torch weight file ({type(e).__name__})") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_into(module: nn.Module, state: dict[str, Tensor], path: str | Path) -> nn.Module:
    """Copy `state` into every parameter/buffer of `module` (extra keys are ignored), then freeze it.

    A missing key or a shape mismatch is an `InputError` naming the file and the key.
    """
    own = module.state_dict()
    for key, ref in own.items():
        if key not in state:
            raise InputError(f"{path}: missing weight {key!r} ({len(state)} keys in file)")
        if state[key].shape != ref.shape:
            raise InputError(
                f"{path}: weight {key!r} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own})
    return module.eval().requires_grad_(False)
