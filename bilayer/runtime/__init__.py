"""Per-avatar runtime (docs/runtime.md): initialize once from one photo, render cheaply per frame.

* `avatar.py`  tensor-level wrapper: `Avatar.init` / `Avatar.from_image`, `Avatar.render`;
* `fold.py`    App. A.3: the per-frame network of one avatar as a static `FrameNet`;
* `backends.py` torch (fp32, bf16) and ONNX Runtime (fp32, fp16, int8) runners;
* `pipeline.py` files in, video out (`bilayer animate`), with `faces.py`, `motion.py`, `video.py`.

Imports nothing from training or losses; from data only the landmark renderer and, when files
are involved, the preprocessing's face annotator and media reader.
"""
from bilayer.runtime.avatar import Avatar
from bilayer.runtime.fold import FrameNet, fold_generator

__all__ = ["Avatar", "FrameNet", "fold_generator"]
