"""Discriminator D(x(t), y(t)) (Sec. 3.1; Fig. 13, App. A.1).

Conditional relativistic PatchGAN: image concatenated with its landmark image -> conv ->
downsampling residual blocks (average pooling, BatchNorm) to 8x8 -> one block at 8x8 (no skip
conv) -> BatchNorm, LeakyReLU, 1x1 conv -> a matrix of realism scores. The features after the
second nonlinearity of every block feed the feature-matching loss (Eq. 14). Real and fake
batches are meant to be concatenated into one call so BatchNorm sees both (A.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.layers import ResBlock, conv


@dataclass
class DiscriminatorOutput:
    scores: Tensor  # (B, 1, 8, 8) patch realism scores
    features: list[Tensor]  # one (B, C_k, H_k, W_k) per block, for feature matching


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sn, slope, eps = cfg.spectral_norm, cfg.leaky_slope, cfg.bn_eps
        ch = cfg.encoder_channels(cfg.dis_channels, cfg.dis_max_channels, cfg.dis_output_size)
        self.stem = conv(3 + cfg.landmark_channels, ch[0], 3, sn=sn)
        blocks = [ResBlock(a, b, down=True, norm=True, slope=slope, sn=sn, eps=eps) for a, b in zip(ch[:-1], ch[1:])]
        blocks.append(ResBlock(ch[-1], ch[-1], norm=True, slope=slope, sn=sn, eps=eps))
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.BatchNorm2d(ch[-1], eps=eps), nn.LeakyReLU(slope), conv(ch[-1], 1, 1, sn=sn))

    def forward(self, image: Tensor, landmark_image: Tensor) -> DiscriminatorOutput:
        """image, landmark_image: (B, 3, H, W) in [-1, 1]."""
        x = self.stem(torch.cat([image, landmark_image], dim=1))
        features = []
        for block in self.blocks:
            x, f = block.forward_with_features(x)
            features.append(f)
        return DiscriminatorOutput(self.out(x), features)
