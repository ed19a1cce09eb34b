"""Inference generator G (Sec. 3.1, 3.5; Fig. 11): the only network that runs per frame.

Keypoint vector (68 x 2 -> 136) -> linear layers (256-d) -> C x 4 x 4 -> efficient upsampling
residual blocks (first conv before upsampling) with adaptive BatchNorm and adaptive skip convs ->
three conv3x3 heads:
  * low-frequency RGB x_LF(t) (tanh),
  * warp offset (tanh) added to an identity sampling grid: omega(t) = I + delta (Eq. 9),
  * segmentation mask logit m(t) (Sec. 3.4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.layers import (
    AdaptiveBatchNorm,
    AdaptiveDecoder,
    Params,
    conv,
    linear,
    make_skip_factory,
)
from bilayer.nets.projector import Projector, projection_groups


def identity_grid(h: int, w: int) -> Tensor:
    """Sampling grid of pixel centres (grid_sample, align_corners=False): (1, H, W, 2) as (x, y)."""
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


@dataclass
class InferenceOutput:
    lf: Tensor  # (B, 3, H, W) low-frequency layer in [-1, 1]
    warp_delta: Tensor  # (B, H, W, 2) offset from the identity grid, in [-1, 1]
    grid: Tensor  # (B, H, W, 2) omega(t) = identity + delta, for grid_sample
    mask_logit: Tensor  # (B, 1, H, W)


class InferenceGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.generator_channels(cfg.inf_channels, cfg.inf_max_channels)
        sn, s0 = cfg.spectral_norm, cfg.generator_input_size
        self.c0, self.s0 = ch[0], s0
        dims = [2 * cfg.num_keypoints] + [cfg.kp_hidden] * (cfg.kp_layers - 1) + [ch[0] * s0 * s0]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(linear(a, b, sn=sn))
            if i < len(dims) - 2:
                layers.append(nn.LeakyReLU(cfg.leaky_slope))
        self.mlp = nn.Sequential(*layers)
        self.decoder = AdaptiveDecoder(
            ch, s0, lambda c, size: AdaptiveBatchNorm(c, cfg.bn_eps), make_skip_factory(adaptive=cfg.ada_skip, sn=sn),
            upsample_first=False, slope=cfg.leaky_slope, sn=sn, eps=cfg.bn_eps,
        )
        self.head_lf = conv(ch[-1], 3, 3, sn=sn)
        self.head_warp = conv(ch[-1], 2, 3, sn=sn)
        self.head_mask = conv(ch[-1], 1, 3, sn=sn)
        self.projector = Projector(projection_groups(self.decoder.block_specs(), cfg.projection_layout),
                                   cfg.embedding_channels, cfg.projection_hidden, cfg.inf_projection_size, sn)
        self.register_buffer("grid0", identity_grid(cfg.image_size, cfg.image_size), persistent=False)

    def adaptive_params(self, embeddings: list[Tensor]) -> list[Params]:
        """Once per avatar: embeddings -> adaptive BN affines and skip-conv weights."""
        return self.projector(embeddings)

    def forward(self, keypoints: Tensor, params: list[Params]) -> InferenceOutput:
        """keypoints: (B, 68, 2) in [-1, 1]; params: cached adaptive params (batch B or 1)."""
        b = keypoints.shape[0]
        x = self.mlp(keypoints.reshape(b, -1)).reshape(b, self.c0, self.s0, self.s0)  # (B, C_0, 4, 4)
        h = self.decoder.decode(x, params)  # (B, C_K, H, W)
        delta = torch.tanh(self.head_warp(h)).permute(0, 2, 3, 1)  # (B, H, W, 2)
        return InferenceOutput(
            lf=torch.tanh(self.head_lf(h)),
            warp_delta=delta,
            grid=self.grid0 + delta,
            mask_logit=self.head_mask(h),
        )
