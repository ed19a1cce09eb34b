"""Prediction of adaptive parameters from the embeddings (App. A.2, "matrix decomposition").

For block k of a generator, the embedding e_k (B, C_k, 8, 8) is resized by nearest
interpolation to S x S (S = 32 for the texture generator, 16 for the inference generator),
flattened to a matrix and viewed as `rows x D` with one row per channel of the target layer
(rows = that layer's output channels). Three linear maps without nonlinearities
(D -> C_k -> C_k -> cols) then give each row's weights and bias. Each adaptive tensor has its
own three maps. This runs once per avatar; its outputs are cached by the caller.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.nets.layers import Specs, linear


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot contain dots


class Projector(nn.Module):
    """Embeddings -> adaptive parameters of every block of one generator."""

    def __init__(self, block_specs: list[Specs], emb_channels: list[int], size: int, sn: bool = True):
        super().__init__()
        if len(block_specs) != len(emb_channels):
            raise ValueError(f"{len(block_specs)} generator blocks but {len(emb_channels)} embeddings")
        self.size = size
        self.block_specs = block_specs
        self.heads = nn.ModuleList()
        for specs, c in zip(block_specs, emb_channels):
            heads = nn.ModuleDict()
            for name, (rows, cols) in specs.items():
                flat = c * size * size
                if flat % rows:
                    raise ValueError(f"embedding of {c}x{size}x{size} cannot be viewed as {rows} rows ({name})")
                heads[_key(name)] = nn.Sequential(
                    linear(flat // rows, c, sn), linear(c, c, sn), linear(c, cols, sn)
                )
            self.heads.append(heads)

    def forward(self, embeddings: list[Tensor]) -> list[dict[str, Tensor]]:
        """embeddings: K tensors (B, C_k, h, w) -> K dicts name -> (B, rows, cols)."""
        out = []
        for emb, specs, heads in zip(embeddings, self.block_specs, self.heads):
            e = F.interpolate(emb, size=(self.size, self.size), mode="nearest")  # (B, C_k, S, S)
            b = e.shape[0]
            out.append({name: heads[_key(name)](e.reshape(b, rows, -1)) for name, (rows, _) in specs.items()})
        return out
