"""The bi-layer model (Sec. 3.1, Fig. 2): the four networks of an avatar and the phases of their use.

* `initialize` (once per avatar): E -> embeddings -> adaptive params of G and G_tex -> texture.
* `refine` (once per avatar): M learned-gradient-descent steps of G_upd on the texture (Sec. 3.3, Eq. 7).
* `render` (per frame): G(keypoints) -> LF + warp + mask; output = LF + texture warped (Eq. 1).

The discriminator (`nets.discriminator`) is a training-only network: it lives beside the model in
the trainer and in training checkpoints, not in it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.embedder import Embedder
from bilayer.nets.inference_generator import InferenceGenerator
from bilayer.nets.layers import Params, apply_mask
from bilayer.nets.texture_generator import TextureGenerator
from bilayer.nets.updater import TextureUpdater
from bilayer.timing import Stage, untimed


@dataclass
class AvatarState:
    """Everything identity-specific, computed once per avatar and reused for every frame."""

    inference_params: list[Params]  # adaptive params of G, per block: name -> (B, rows, cols)
    texture: Tensor  # (B, 3, H, W) high-frequency texture X_hat(s)


@dataclass
class Rendered:
    image: Tensor  # (B, 3, H, W) x_hat(t) = LF + HF (Eq. 1)
    lf: Tensor  # (B, 3, H, W) low-frequency layer
    hf: Tensor  # (B, 3, H, W) warped texture
    mask_logit: Tensor  # (B, 1, H, W)
    grid: Tensor  # (B, H, W, 2) warp field omega(t)
    warp_delta: Tensor  # (B, H, W, 2) omega(t) - identity (Eq. 9)

    @property
    def mask(self) -> Tensor:
        return torch.sigmoid(self.mask_logit)


def warp_texture(texture: Tensor, grid: Tensor, align_corners: bool = False) -> Tensor:
    """HF layer: bilinear sampling of the texture at the warp field (texture B may be 1)."""
    if texture.shape[0] != grid.shape[0]:
        texture = texture.expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


#: The networks of an avatar, by attribute of `BilayerModel` (the names checkpoints use): those of
#: the base stage, then the texture updater.
BASE_NETWORKS = ("embedder", "texture_generator", "inference_generator")
NETWORKS = (*BASE_NETWORKS, "updater")


class BilayerModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedder = Embedder(cfg)
        self.texture_generator = TextureGenerator(cfg)
        self.inference_generator = InferenceGenerator(cfg)
        self.updater = TextureUpdater(cfg)

    def initialize(self, source_image: Tensor, source_landmark_image: Tensor,
                   source_mask: Tensor | None = None, stage: Stage = untimed) -> AvatarState:
        """source_image, source_landmark_image: (B, [N,] 3, H, W); mask (B, [N,] 1, H, W) or None.
        `stage` wraps each phase ("embedder", "projections", "texture generator"; the runtime
        times them)."""
        with stage("embedder"):
            embeddings = self.embedder(source_image, source_landmark_image, source_mask)
        with stage("projections"):
            inference_params = self.inference_generator.adaptive_params(embeddings)
            texture_params = self.texture_generator.adaptive_params(embeddings)
        with stage("texture generator"):
            texture = self.texture_generator.generate(texture_params, embeddings[0].shape[0])
        return AvatarState(inference_params, texture)

    def render(self, keypoints: Tensor, state: AvatarState) -> Rendered:
        """keypoints: (B, 68, 2) in [-1, 1] -> the synthesized frame and its layers."""
        out = self.inference_generator(keypoints, state.inference_params)
        hf = warp_texture(state.texture, out.grid, self.cfg.align_corners)
        return Rendered(out.lf + hf, out.lf, hf, out.mask_logit, out.grid, out.warp_delta)

    def refine(self, state: AvatarState, source_keypoints: Tensor, source_image: Tensor,
               steps: int | None = None, stage: Stage = untimed) -> AvatarState:
        """Refine the texture with G_upd, guided by L_upd = cfg.guide_loss_scale x the sum of
        squares on the SOURCE frame's foreground: rendering and source both cut with the mask
        predicted at the source pose (Sec. 3.4, as every image loss; the released code's
        `enh_apply_masks`), so the texture is not steered to paint the background. `stage` wraps
        the source render ("updater guide") and each step ("updater step m")."""
        with torch.no_grad(), stage("updater guide"):
            src = self.inference_generator(source_keypoints, state.inference_params)
            mask = torch.sigmoid(src.mask_logit)  # (B, 1, H, W)
            source = apply_mask(source_image, mask)

        scale, align = self.cfg.guide_loss_scale, self.cfg.align_corners

        def guide_loss(texture: Tensor) -> Tensor:
            return scale * ((apply_mask(src.lf + warp_texture(texture, src.grid, align), mask) - source) ** 2).sum()

        return replace(state, texture=self.updater.refine(state.texture, guide_loss, steps, stage))
