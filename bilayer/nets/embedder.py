"""Embedder E(x(s), y(s)) (Sec. 3.1; Fig. 12).

Source image (background set to -1 by the source mask) concatenated with its landmark image ->
conv -> downsampling residual blocks to 8x8 -> K same-resolution blocks that give the embeddings
e_k(s). The channels narrow block by block to match the texture generator's blocks
(512, 512, 512, 256, 128, 64 at 256 px), bottlenecking the embeddings (A.2). No normalization,
so the embedder trains more slowly than the rest (A.2). Several source frames are averaged.

`ModelConfig.embedding_tap` picks each block's output ("output") or its features after the first
conv and activation ("features", the authors' released code); `source_average` averages N source
frames per embedding ("embeddings") or once after the encoder ("encoder", the released code).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.layers import ResBlock, apply_mask, conv


class Embedder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sn, slope = cfg.spectral_norm, cfg.leaky_slope
        enc = cfg.encoder_channels(cfg.emb_channels, cfg.emb_max_channels, cfg.embedding_size)
        self.stem = conv(3 + cfg.landmark_channels, enc[0], 3, sn=sn)
        self.down = nn.Sequential(*[ResBlock(a, b, down=True, slope=slope, sn=sn) for a, b in zip(enc[:-1], enc[1:])])
        outs = cfg.embedding_channels
        self.blocks = nn.ModuleList(
            ResBlock(a, b, slope=slope, sn=sn) for a, b in zip([enc[-1]] + outs[:-1], outs)
        )
        self.tap, self.average = cfg.embedding_tap, cfg.source_average

    def forward(self, image: Tensor, landmark_image: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """image, landmark_image: (B, [N,] 3, H, W) in [-1, 1]; mask: (B, [N,] 1, H, W) in [0, 1].

        Returns K embeddings (B, C_k, 8, 8), averaged over the N source frames when given.
        """
        multi = image.dim() == 5
        if multi:
            b, n = image.shape[:2]
            image, landmark_image = image.flatten(0, 1), landmark_image.flatten(0, 1)
            mask = mask.flatten(0, 1) if mask is not None else None
        if mask is not None:
            image = apply_mask(image, mask)
        x = self.down(self.stem(torch.cat([image, landmark_image], dim=1)))  # (B*N, 512, 8, 8)
        if multi and self.average == "encoder":
            x, multi = x.unflatten(0, (b, n)).mean(1), False  # (B, 512, 8, 8)
        embeddings = []
        for block in self.blocks:
            x, features = block.forward_with_features(x)
            e = features if self.tap == "features" else x  # (B[*N], C_k, 8, 8)
            embeddings.append(e.unflatten(0, (b, n)).mean(1) if multi else e)
        return embeddings
