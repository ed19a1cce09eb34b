"""Prediction of adaptive parameters from the embeddings (App. A.2, "matrix decomposition").

The embedding e_k (B, C_k, 8, 8) is resized by nearest interpolation to S x S (S = 32 for the
texture generator, 16 for the inference generator), flattened to a matrix and viewed as
`rows x D`, one row per output channel of the layer it predicts. Three linear maps without
nonlinearities (D -> hidden -> hidden -> cols) then give each row's weights and bias; every
adaptive tensor has its own three maps. This runs once per avatar; the caller caches the outputs.

Which embedding predicts which tensor is the model's `projection_layout` (`projection_groups`):
"block" gives embedding k block k's own norms and skip (hidden width C_k); "official", the
authors' released code, hands parameters out in module order, so embedding k predicts block k's
second norm and skip and block k+1's first norm (the output norm after the last block), every row
being one of block k's output channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.nets.layers import Params, Specs, linear


@dataclass(frozen=True)
class Target:
    """One adaptive tensor: the decoder block whose parameters receive it, its name there
    (e.g. "norm2.affine", "out_norm.scale") and its (rows, cols) shape."""

    block: int
    name: str
    rows: int
    cols: int


def projection_groups(block_specs: list[Specs], layout: str) -> list[list[Target]]:
    """The targets each embedding predicts, in head order (the released code's order for
    "official": block k's norm2, skip, then block k+1's norm1 or the output norm)."""
    groups = [[Target(k, name, *shape) for name, shape in specs.items()] for k, specs in enumerate(block_specs)]
    if layout == "block":
        return groups
    if layout != "official":
        raise ValueError(f"unknown projection layout {layout!r}")
    own = [[t for t in group if not t.name.startswith("norm1.")] for group in groups]
    for k in range(len(groups) - 1):
        own[k] += [t for t in groups[k + 1] if t.name.startswith("norm1.")]
    return own


def head_key(group: int, target: Target) -> str:
    """ModuleDict key of a head (no dots allowed): its name, marked "next" when it predicts a
    tensor of the following block."""
    name = target.name if target.block == group else f"next.{target.name}"
    return name.replace(".", "__")


class Projector(nn.Module):
    """Embeddings -> adaptive parameters of every block of one generator."""

    def __init__(self, groups: list[list[Target]], emb_channels: list[int], hidden: list[int], size: int,
                 sn: bool = True):
        super().__init__()
        if not len(groups) == len(emb_channels) == len(hidden):
            raise ValueError(f"{len(groups)} head groups, {len(emb_channels)} embeddings, {len(hidden)} widths")
        self.size, self.groups = size, groups
        self.heads = nn.ModuleList()
        for k, (group, c, width) in enumerate(zip(groups, emb_channels, hidden)):
            heads = nn.ModuleDict()
            for t in group:
                flat = c * size * size
                if flat % t.rows:
                    raise ValueError(f"embedding of {c}x{size}x{size} cannot be viewed as {t.rows} rows ({t.name})")
                heads[head_key(k, t)] = nn.Sequential(
                    linear(flat // t.rows, width, sn=sn), linear(width, width, sn=sn), linear(width, t.cols, sn=sn)
                )
            self.heads.append(heads)

    def forward(self, embeddings: list[Tensor]) -> list[Params]:
        """embeddings: K tensors (B, C_k, h, w) -> per decoder block, name -> (B, rows, cols)."""
        out: list[dict[str, Tensor]] = [{} for _ in embeddings]
        for k, (emb, group, heads) in enumerate(zip(embeddings, self.groups, self.heads)):
            e = F.interpolate(emb, size=(self.size, self.size), mode="nearest")  # (B, C_k, S, S)
            b = e.shape[0]
            for t in group:
                out[t.block][t.name] = heads[head_key(k, t)](e.reshape(b, t.rows, -1))
        return out
