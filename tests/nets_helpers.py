"""A tiny model config and dummy inputs shared by the network tests."""
from __future__ import annotations

import torch
from torch import nn

from bilayer.config import ModelConfig, model_config
from bilayer.data.frame import Frame
from bilayer.nets import BilayerModel

TINY = dict(
    image_size=64,
    emb_channels=8, emb_max_channels=32,
    tex_channels=8, tex_max_channels=32,
    inf_channels=4, inf_max_channels=16,
    dis_channels=8, dis_max_channels=32,
    upd_channels=8, upd_max_channels=16, upd_num_blocks=2,
    kp_hidden=32, tex_projection_size=8, inf_projection_size=8,
)


def tiny_config(size: str = "medium", **overrides) -> ModelConfig:
    return model_config(size, **{**TINY, **overrides})


def dummy_batch(cfg: ModelConfig, b: int = 2, seed: int = 0) -> Frame:
    """A batch of `b` random frames."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    image = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    landmark_image = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    mask = torch.rand(b, 1, s, s, generator=g)
    keypoints = torch.rand(b, cfg.num_keypoints, 2, generator=g) * 2 - 1
    return Frame(image, landmark_image, keypoints, mask)


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, so that folding them is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.normal_(0, 0.2, generator=g)


def tiny_avatar(backend: str = "torch", precision: str = "fp32"):
    """(avatar, inputs): a seeded tiny model with non-trivial BatchNorm statistics, initialized
    from a random source with keypoints and mask (the updater runs)."""
    from bilayer.runtime import Avatar

    torch.manual_seed(0)
    model = BilayerModel(tiny_config())
    randomize_norm_stats(model)
    x = dummy_batch(model.cfg, b=1)
    avatar = Avatar(model, backend, precision)
    avatar.initialize(x)
    return avatar, x
