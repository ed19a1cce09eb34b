"""Texture updater G_upd and learned gradient descent on the texture (Sec. 3.3, Eq. 7; Fig. 14).

Encoder-decoder of residual blocks without normalization: (texture ⊕ guiding gradient, 6 ch) ->
conv -> downsampling block to the 128-channel bottleneck at half resolution -> residual blocks ->
upsampling block -> conv -> 3 channels. Each step: X_{m+1} = X_m + tanh(G_upd(X_m, dL_upd/dX_m)).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from bilayer.config import ModelConfig
from bilayer.nets.layers import ResBlock, UpResBlock, conv
from bilayer.timing import Stage, untimed


class TextureUpdater(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sn, slope = cfg.spectral_norm, cfg.leaky_slope
        chans = [cfg.upd_channels]
        while chans[-1] < cfg.upd_max_channels:
            chans.append(min(2 * chans[-1], cfg.upd_max_channels))
        self.stem = conv(6, chans[0], 3, sn=sn)
        self.down = nn.Sequential(*[ResBlock(a, b, down=True, slope=slope, sn=sn) for a, b in zip(chans[:-1], chans[1:])])
        self.body = nn.Sequential(*[ResBlock(chans[-1], chans[-1], slope=slope, sn=sn) for _ in range(cfg.upd_num_blocks)])
        rev = chans[::-1]
        self.up = nn.Sequential(*[UpResBlock(a, b, slope=slope, sn=sn) for a, b in zip(rev[:-1], rev[1:])])
        self.out = nn.Sequential(nn.LeakyReLU(slope), conv(chans[0], 3, 3, sn=sn))
        self.steps = cfg.upd_steps

    def forward(self, texture: Tensor, grad: Tensor) -> Tensor:
        """texture, grad: (B, 3, H, W) -> texture update (B, 3, H, W) in [-1, 1]."""
        x = self.stem(torch.cat([texture, grad], dim=1))
        return torch.tanh(self.out(self.up(self.body(self.down(x)))))

    def refine(self, texture: Tensor, guide_loss: Callable[[Tensor], Tensor], steps: int | None = None,
               stage: Stage = untimed) -> Tensor:
        """M steps of Eq. 7. `guide_loss(texture)` is L_upd on the SOURCE frame (scaled sum of squares).

        The guiding gradients are inputs only (detached); the returned texture stays attached
        to G_upd's graph, so the target objective back-propagates through all M copies. `stage`
        wraps each step ("updater step 1" ...).
        """
        for m in range(self.steps if steps is None else steps):
            with stage(f"updater step {m + 1}"):
                with torch.enable_grad():
                    leaf = texture.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(guide_loss(leaf), leaf)
                texture = texture + self(texture, grad.detach())
        return texture
