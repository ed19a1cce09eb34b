"""Tensor-level avatar (Sec. 3.1, Fig. 2; App. A.3): initialization once, then per-frame rendering.

`initialize` runs everything identity-specific exactly once, from the source `Frame`: the
embedder, the adaptive parameters of both generators, the texture, the updater's M steps, then folds
the inference generator with this avatar's parameters into a static `FrameNet` (adaptive params
merged into plain conv/BN, spectral norm removed, App. A.3) and prepares the chosen backend.
`render` runs only that network and one texture lookup.

`Avatar.from_image(photo, checkpoint)` adds the file side: face detection, crop, keypoints,
landmark image and mask with the preprocessing's detector.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from bilayer.data.frame import Frame
from bilayer.errors import InputError
from bilayer.nets import AvatarState, BilayerModel
from bilayer.runtime.backends import Runner, make_runner
from bilayer.runtime.fold import FrameNet, fold_generator
from bilayer.runtime.motion import motion_samples

if TYPE_CHECKING:
    from bilayer.runtime.faces import SourceFace


class Avatar:
    """Takes the model over: eval mode (running/standing BN statistics) and channels-last weights
    (oneDNN's faster layouts for the one-time init networks)."""

    def __init__(self, model: BilayerModel, backend: str = "torch", precision: str = "fp32"):
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.backend, self.precision = backend, precision
        self.state: AvatarState | None = None
        self.frame_net: FrameNet | None = None  # the folded per-frame network (float32)
        self.source_keypoints: Tensor | None = None  # (1, 68, 2)
        self.source_render: tuple[Tensor, Tensor] | None = None  # init-time (image, mask) at the source pose
        self.source_face: SourceFace | None = None  # the photo's crop, set by from_image
        self._runner: Runner | None = None

    @classmethod
    def from_image(cls, photo: str | Path | np.ndarray, model: BilayerModel | str | Path, backend: str = "torch",
                   precision: str = "fp32") -> "Avatar":
        """An avatar from ONE photo (path or (H, W, 3) uint8 RGB) and a model, or the checkpoint to
        load it from. A model may serve many avatars (each folds its own per-frame network)."""
        from bilayer.checkpoint import load_model
        from bilayer.runtime.faces import crop_source

        if not isinstance(model, BilayerModel):
            model, _ = load_model(model)
        face = crop_source(photo, model.cfg.image_size, model.cfg.preprocessing)
        avatar = cls(model, backend, precision)
        avatar.initialize(face.frame())
        avatar.source_face = face
        return avatar

    @torch.no_grad()
    def initialize(self, source: Frame) -> AvatarState:
        """source: the photo as a batch of one `Frame`: image and landmark image (1, 3, H, W) in
        [-1, 1], keypoints (1, 68, 2) in [-1, 1] (they guide the texture updater), mask
        (1, 1, H, W) in [0, 1] (blanks the background for the embedder; ones: none). Or N source
        frames (1, N, ...), averaged by the embedder; the first guides the updater."""
        self._check_image(source.image, "source image")
        self._check_image(source.landmark_image, "source landmark image")
        device = next(self.model.parameters()).device
        image, landmark_image, keypoints, mask = source.to(device)
        state = self.model.initialize(image, landmark_image, mask)
        if image.dim() == 5:  # the updater is guided by one frame
            image, keypoints = image[:, 0], keypoints[:, 0]
        keypoints = self._check_keypoints(keypoints)
        if self.model.cfg.upd_steps > 0:
            state = self.model.refine(state, keypoints, image)
        rendered = self.model.render(keypoints, state)
        self.source_keypoints, self.source_render = keypoints, (rendered.image, rendered.mask)
        self.state = state
        self.frame_net = fold_generator(self.model.inference_generator, state.inference_params, state.texture,
                                        self.model.cfg.align_corners)
        calibration = None
        if self.precision == "int8":  # activation ranges from poses around the source's
            calibration = motion_samples(keypoints[0].cpu().numpy(), 32)
        self._runner = make_runner(self.frame_net, self.backend, self.precision, calibration)
        return state

    def render(self, keypoints: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """keypoints: (B, 68, 2) or (68, 2) in [-1, 1] -> image (B, 3, H, W) in [-1, 1], mask
        (B, 1, H, W) in [0, 1]."""
        if self._runner is None:
            raise RuntimeError("Avatar.render called before Avatar.initialize")
        keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
        if keypoints.dim() == 2:
            keypoints = keypoints[None]
        return self._runner(self._check_keypoints(keypoints))

    def _check_image(self, image: Tensor, name: str) -> None:
        s = self.model.cfg.image_size
        if image.dim() not in (4, 5) or image.shape[0] != 1 or image.shape[-3:] != (3, s, s):
            raise InputError(f"{name}: expected one source (1, [N,] 3, {s}, {s}), got {tuple(image.shape)}")

    def _check_keypoints(self, keypoints: Tensor) -> Tensor:
        k = self.model.cfg.num_keypoints
        if keypoints.dim() != 3 or keypoints.shape[1:] != (k, 2):
            raise InputError(f"keypoints: expected (B, {k}, 2), got {tuple(keypoints.shape)}")
        if not torch.isfinite(keypoints).all():
            raise InputError("keypoints: contain NaN or Inf")
        return keypoints
