"""Texture generator G_tex (Sec. 3.1, 3.5; Fig. 10).

Decodes a learned 4x4 tensor through upsampling residual blocks whose BatchNorms are paired with
AdaSPADE and whose skip 1x1 convs are adaptive; all adaptive parameters are predicted from the
embeddings. Output: the high-frequency texture X_hat(s) (B, 3, H, W) in [-1, 1].
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.layers import (
    AdaptiveBatchNorm,
    AdaptiveDecoder,
    AdaSPADE,
    AdaptiveModule,
    Params,
    conv,
    make_skip_factory,
)
from bilayer.nets.projector import Projector, projection_groups


class TextureGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.generator_channels(cfg.tex_channels, cfg.tex_max_channels)  # ch[1:] = cfg.embedding_channels
        s0 = cfg.generator_input_size

        def make_norm(c: int, size: int) -> AdaptiveModule:
            # Baseline (Table 1): adaptive BN + per-pixel biases instead of AdaSPADE.
            return AdaSPADE(c, size, cfg.bn_eps) if cfg.ada_spade else AdaptiveBatchNorm(c, cfg.bn_eps)

        self.input = nn.Parameter(torch.randn(1, ch[0], s0, s0))  # learned input tensor
        self.decoder = AdaptiveDecoder(
            ch, s0, make_norm, make_skip_factory(adaptive=cfg.ada_skip, sn=cfg.spectral_norm),
            upsample_first=True, slope=cfg.leaky_slope, sn=cfg.spectral_norm, eps=cfg.bn_eps,
            pixel_bias=not cfg.ada_spade,
        )
        self.head = conv(ch[-1], 3, 3, sn=cfg.spectral_norm)
        self.projector = Projector(projection_groups(self.decoder.block_specs(), cfg.projection_layout), ch[1:],
                                   cfg.projection_hidden, cfg.tex_projection_size, cfg.spectral_norm)

    def adaptive_params(self, embeddings: list[Tensor]) -> list[Params]:
        return self.projector(embeddings)

    def generate(self, params: list[Params], batch: int) -> Tensor:
        """Adaptive params (batch B) -> texture (B, 3, H, W) in [-1, 1]."""
        x = self.input.expand(batch, -1, -1, -1)  # (B, C_0, 4, 4)
        return torch.tanh(self.head(self.decoder.decode(x, params)))
