"""Per-avatar runtime (docs/runtime.md): initialize once from one photo, render cheaply per frame.

* `avatar.py`  tensor-level wrapper: `Avatar.initialize` / `Avatar.from_image`, `Avatar.render`;
* `fold.py`    App. A.3: the per-frame network of one avatar as a static `FrameNet`;
* `backends.py` torch (fp32, bf16, fp16; `onednn.py` on CPUs) and ONNX Runtime (fp32, fp16, int8)
  runners (their names in `choices.py`); `precision.py` resolves "auto" from what the device has;
* `pipeline.py` files in, video out (`bilayer animate`), with `faces.py`, `motion.py`, `paste.py`.

Imports nothing from training or losses; from data only the landmark renderer and, when files
are involved, the preprocessing's face annotator and media reader. The exports below are loaded
on first use, so that light modules (`choices.py`) import without torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bilayer.runtime.avatar import Avatar
    from bilayer.runtime.fold import FrameNet, fold_generator

__all__ = ["Avatar", "FrameNet", "fold_generator"]
_MODULE_OF = {"Avatar": "avatar", "FrameNet": "fold", "fold_generator": "fold"}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
