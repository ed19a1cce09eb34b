"""Tensor-level avatar (Sec. 3.1, Fig. 2; App. A.3): initialization once, then per-frame rendering.

`initialize` runs everything identity-specific exactly once, from the source `Frame`: the
embedder, the adaptive parameters of both generators, the texture, the updater's M steps, then folds
the inference generator with this avatar's parameters into a static `FrameNet` (adaptive params
merged into plain conv/BN, spectral norm removed, App. A.3) and prepares the chosen backend, at
the precision `runtime.precision` plans ("auto": bf16 where the device has it natively, with a
quality check). Each stage's time is kept in `init_stages_ms`. `render` runs only the folded
network and one texture lookup.

`Avatar.from_image(photo, checkpoint)` adds the file side: face detection, crop, keypoints,
landmark image and mask with the preprocessing's detector.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parametrize

from bilayer.data.frame import Frame
from bilayer.errors import InputError
from bilayer.nets import AvatarState, BilayerModel
from bilayer.metrics.psnr import psnr
from bilayer.runtime.backends import Runner, check_backend, make_runner
from bilayer.runtime.fold import FrameNet, fold_generator
from bilayer.runtime.motion import motion_samples
from bilayer.runtime.precision import MIN_PSNR_DB, plan
from bilayer.timing import StageTimer

if TYPE_CHECKING:
    from bilayer.runtime.faces import SourceFace


class Avatar:
    """Takes the model over for inference (`for_inference`). `precision`: a runner precision of
    `backend` or "auto"; after `initialize`, `precision` is the one the frames run at and
    `precision_note` says why."""

    def __init__(self, model: BilayerModel, backend: str = "torch", precision: str = "auto"):
        check_backend(backend, precision)
        self.model = for_inference(model)
        self.backend, self.requested = backend, precision
        self.precision, self.precision_note = precision, ""
        self.state: AvatarState | None = None
        self.frame_net: FrameNet | None = None  # the folded per-frame network (float32)
        self.source_keypoints: Tensor | None = None  # (1, 68, 2)
        self.source_face: SourceFace | None = None  # the photo's crop, set by from_image
        self.init_stages_ms: dict[str, float] = {}  # stage -> ms of the last initialization (+ the face's)
        self._runner: Runner | None = None

    @classmethod
    def from_image(cls, photo: str | Path | np.ndarray, model: BilayerModel | str | Path, backend: str = "torch",
                   precision: str = "auto") -> "Avatar":
        """An avatar from ONE photo (path or (H, W, 3) uint8 RGB) and a model, or the checkpoint to
        load it from. A model may serve many avatars (each folds its own per-frame network)."""
        from bilayer.checkpoint import load_model
        from bilayer.runtime.faces import crop_source

        if not isinstance(model, BilayerModel):
            model, _ = load_model(model)
        timer = StageTimer()
        face = crop_source(photo, model.cfg.image_size, model.cfg.preprocessing, timer)
        avatar = cls(model, backend, precision)
        avatar.initialize(face.frame())
        avatar.source_face = face
        avatar.init_stages_ms = {**timer.milliseconds(), **avatar.init_stages_ms}
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
        if image.dim() == 5:  # the updater is guided by one frame
            guide_image, keypoints = image[:, 0], keypoints[:, 0]
        else:
            guide_image = image
        keypoints = self._check_keypoints(keypoints)
        chosen = plan(self.requested, self.backend, device)
        timer = StageTimer()
        state = self._one_time_networks(image, landmark_image, mask, keypoints, guide_image, chosen.init_dtype, timer)
        note = str(chosen)
        if self.requested == "auto" and chosen.init_dtype != torch.float32 and not _finite(state):
            timer = StageTimer()
            state = self._one_time_networks(image, landmark_image, mask, keypoints, guide_image, torch.float32, timer)
            note = f"{chosen.reason}; one-time networks fp32 (bf16 gave non-finite values)"
        with timer("folding"):
            self.frame_net = fold_generator(self.model.inference_generator, state.inference_params, state.texture,
                                            self.model.cfg.align_corners)
        with timer("backend"):
            self.precision, self._runner, check = self._make_runner(chosen.frames, keypoints)
        self.precision_note = note + check
        self.source_keypoints, self.state, self.init_stages_ms = keypoints, state, timer.milliseconds()
        return state

    def _one_time_networks(self, image: Tensor, landmark_image: Tensor, mask: Tensor, keypoints: Tensor,
                           guide_image: Tensor, dtype: torch.dtype, timer: StageTimer) -> AvatarState:
        """Embedder, projections, texture generator and the updater's steps, under autocast at
        `dtype` (none for float32); the state comes back in float32."""
        low = dtype != torch.float32
        autocast = torch.autocast(image.device.type, dtype=dtype) if low else contextlib.nullcontext()
        with autocast:
            state = _float32(self.model.initialize(image, landmark_image, mask, stage=timer))
            if self.model.cfg.upd_steps > 0:
                state = self.model.refine(state, keypoints, guide_image, stage=timer)
        return _float32(state)

    def _make_runner(self, precision: str, keypoints: Tensor) -> tuple[str, Runner, str]:
        """The runner at `precision`; for "auto" at a reduced precision, checked against the float32
        runner at the source pose (which it falls back to when short): numerical trouble of this
        avatar's folded weights at a reduced precision (overflow, lost small terms) shows there."""
        calibration = None
        if precision == "int8":  # activation ranges from poses around the source's
            calibration = motion_samples(keypoints[0].cpu().numpy(), 32)
        runner = make_runner(self.frame_net, self.backend, precision, calibration)
        if self.requested != "auto" or precision == "fp32":
            return precision, runner, ""
        fp32 = make_runner(self.frame_net, self.backend, "fp32")
        with torch.inference_mode():
            quality = psnr(runner(keypoints)[0].float().cpu().numpy(), fp32(keypoints)[0].float().cpu().numpy())
        if quality >= MIN_PSNR_DB:
            return precision, runner, f"; frames {quality:.1f} dB vs fp32"
        return "fp32", fp32, f"; frames fp32 ({precision} gave {quality:.1f} dB < {MIN_PSNR_DB:.0f} dB vs fp32)"

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


def for_inference(model: BilayerModel) -> BilayerModel:
    """The model, in place, as every avatar uses it: eval mode (running/standing BN statistics),
    channels-last weights (oneDNN's faster layouts) and spectral norm materialized: each weight
    replaced once by W / sigma, the value eval mode computes on every forward (App. A.3 removes it
    for deployment too). Idempotent; the model can no longer be trained or saved as a training
    checkpoint (its state dict loses the spectral-norm vectors)."""
    model.eval()
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model.to(memory_format=torch.channels_last)


def _float32(state: AvatarState) -> AvatarState:
    return replace(state, texture=state.texture.float(),
                   inference_params=[{k: v.float() for k, v in p.items()} for p in state.inference_params])


def _finite(state: AvatarState) -> bool:
    return bool(torch.isfinite(state.texture).all()) and all(
        bool(torch.isfinite(v).all()) for p in state.inference_params for v in p.values())

