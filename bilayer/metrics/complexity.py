"""Per-frame complexity of the inference path in MACs (paper Sec. 4, "MACs"; Table 2).

What is counted: everything that runs per frame — the inference generator G (keypoint MLP,
upsampling blocks, adaptive BN, adaptive skip convs, heads), the bilinear texture sampling and
the final sum — at batch 1. Initialization (embedder, projectors, texture generator, updater) runs
once per avatar and is excluded, as in the paper.

How it is counted: `torch.utils.flop_counter.FlopCounterMode` over the real modules, which counts
2 FLOPs per multiply-accumulate of every convolution, linear layer and (batched) matmul; we halve
it. Spectral-norm weights are materialized once before counting (in deployment they are folded
into the weights, App. A.3). Ops the counter does not model are added analytically: bilinear
`grid_sample` = 4 MACs per output value (3 x H x W values). Normalization, activations, nearest
upsampling and the LF + HF sum are elementwise and, as in the paper's tool, not MACs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from bilayer.config import ModelConfig
from bilayer.nets import BilayerModel

BILINEAR_MACS_PER_VALUE = 4


def counted_macs(run: Callable[[], object], image_size: int) -> tuple[int, int]:
    """(network, sampling) MACs of one call of `run`, which renders one (3, S, S) frame: the
    counter's FLOPs halved, and the bilinear texture lookup added analytically."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops() // 2, BILINEAR_MACS_PER_VALUE * 3 * image_size**2


@torch.no_grad()
def frame_macs(cfg: ModelConfig, model: BilayerModel | None = None) -> dict[str, int]:
    """MACs of one rendered frame (batch 1) and the parameter count of the per-frame network."""
    model = (model or BilayerModel(cfg)).eval()
    h = w = cfg.image_size
    source = torch.zeros(1, 3, h, w)
    state = model.initialize(source, source)
    keypoints = torch.zeros(1, cfg.num_keypoints, 2)
    with parametrize.cached():
        model.render(keypoints, state)  # materialize spectral-normalized weights outside the count
        network_macs, sampling_macs = counted_macs(lambda: model.render(keypoints, state), h)
    gen = model.inference_generator
    params = sum(p.numel() for n, p in gen.named_parameters() if not n.startswith("projector."))
    adaptive = sum(t[0].numel() for block in state.inference_params for t in block.values())
    return {
        "macs": network_macs + sampling_macs,
        "generator_macs": network_macs,
        "sampling_macs": sampling_macs,
        "params": params + adaptive,
    }
