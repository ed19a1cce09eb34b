"""Tensor-level avatar (Sec. 3.1, Fig. 2): initialization once, then per-frame rendering.

`init` runs the embedder, predicts the adaptive parameters of both generators, synthesizes the
texture and (when source keypoints are given) refines it with the updater's M steps; the results
are cached in an `AvatarState`. `render` runs only the inference generator and one texture
lookup: it never touches the embedder, the projectors or the texture generator.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bilayer.errors import InputError
from bilayer.nets import AvatarState, BilayerModel


class Avatar:
    def __init__(self, model: BilayerModel):
        self.model = model.eval()
        self.state: AvatarState | None = None

    @torch.no_grad()
    def init(
        self,
        source_image: Tensor,
        source_landmark_image: Tensor,
        source_keypoints: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> AvatarState:
        """source_image, source_landmark_image: (1, 3, H, W) in [-1, 1] (or (1, N, 3, H, W) for N
        source frames); source_keypoints: (1, 68, 2) in [-1, 1] enables the texture updater;
        source_mask: (1, 1, H, W) in [0, 1] blanks the source background for the embedder."""
        self._check_image(source_image, "source_image")
        self._check_image(source_landmark_image, "source_landmark_image")
        state = self.model.initialize(source_image, source_landmark_image, source_mask)
        if source_keypoints is not None and self.model.cfg.upd_steps > 0:
            image = source_image if source_image.dim() == 4 else source_image[:, 0]
            keypoints = source_keypoints if source_keypoints.dim() == 3 else source_keypoints[:, 0]
            state = self.model.enhance(state, self._check_keypoints(keypoints), image)
        self.state = state
        return state

    @torch.no_grad()
    def render(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """keypoints: (B, 68, 2) or (68, 2) in [-1, 1] -> image (B, 3, H, W), mask (B, 1, H, W)."""
        if self.state is None:
            raise RuntimeError("Avatar.render called before Avatar.init")
        if keypoints.dim() == 2:
            keypoints = keypoints[None]
        out = self.model.render(self._check_keypoints(keypoints), self.state)
        return out.image, out.mask

    def _check_image(self, image: Tensor, name: str) -> None:
        s = self.model.cfg.image_size
        if image.dim() not in (4, 5) or image.shape[-3:] != (3, s, s):
            raise InputError(f"{name}: expected (B, [N,] 3, {s}, {s}), got {tuple(image.shape)}")

    def _check_keypoints(self, keypoints: Tensor) -> Tensor:
        k = self.model.cfg.num_keypoints
        if keypoints.dim() != 3 or keypoints.shape[1:] != (k, 2):
            raise InputError(f"keypoints: expected (B, {k}, 2), got {tuple(keypoints.shape)}")
        if not torch.isfinite(keypoints).all():
            raise InputError("keypoints: contain NaN or Inf")
        return keypoints
