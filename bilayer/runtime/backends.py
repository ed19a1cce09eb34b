"""Per-frame execution of a folded `FrameNet`: PyTorch or ONNX Runtime, at several precisions.

Every runner maps keypoints (B, 68, 2) float32 in [-1, 1] to (image (B, 3, H, W) in [-1, 1],
mask (B, 1, H, W) in [0, 1]) as float32 tensors (torch: on the network's device). Names are
"backend/precision":

  torch/fp32         PyTorch, float32: on a CPU with oneDNN `OneDnnFrameNet` (prepacked weights,
                     fused activations and skips), elsewhere the eager `FrameNet`
  torch/bf16         the same in bfloat16 (AMX / AVX512-BF16 where the CPU has them) up to the
                     head; the warp grid, texture lookup and outputs in float32 (the eager
                     fallback keeps the head in float32 too)
  torch/fp16         eager, MLP and blocks in float16 (for GPUs)
  onnxruntime/fp32   ONNX Runtime CPU, all graph optimizations (NCHWc layouts, fused activations)
  onnxruntime/fp16   float16 weights and compute (the paper's mobile setting, A.3)
  onnxruntime/int8   static int8 quantization calibrated on the avatar's keypoints
"""
from __future__ import annotations

import copy
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from bilayer.errors import InputError
from bilayer.runtime import onednn
from bilayer.runtime.choices import RUNNER_PRECISIONS
from bilayer.runtime.fold import FrameNet


class Runner(Protocol):
    def __call__(self, keypoints: Tensor) -> tuple[Tensor, Tensor]: ...


class TorchRunner:
    """PyTorch on the device the network lives on: `OneDnnFrameNet` where `onednn.supported`,
    else an eager copy with channels-last activations (MLP and blocks at `dtype`; the head, grid
    and texture stay float32)."""

    def __init__(self, net: FrameNet, dtype: torch.dtype = torch.float32):
        self.device = net.grid0.device
        if onednn.supported(self.device, dtype):
            self.net = onednn.OneDnnFrameNet(net, dtype)
        else:
            self.net = copy.deepcopy(net).to(memory_format=torch.channels_last)
            self.net.mlp.to(dtype)
            self.net.blocks.to(dtype)

    @torch.inference_mode()
    def __call__(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(keypoints.to(self.device))


class OrtRunner:
    def __init__(self, net: FrameNet, precision: str, calibration: np.ndarray | None = None,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise InputError("backend onnxruntime: not installed (pip install 'bilayer[export]')") from None
        from bilayer.runtime.onnx import avatar_onnx

        model = avatar_onnx(net, fp16=precision == "fp16")
        if precision == "int8":
            from bilayer.runtime.int8 import quantize_int8

            if calibration is None:
                raise ValueError("onnxruntime/int8 needs calibration keypoints")
            model = quantize_int8(model, calibration)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        image, mask = self.session.run(["image", "mask"], {"keypoints": keypoints.float().numpy()})
        return torch.from_numpy(image), torch.from_numpy(mask)


RunnerFactory = Callable[[FrameNet, "np.ndarray | None"], Runner]

#: "backend/precision" -> runner factory (net, calibration keypoints (N, 68, 2) or None); the same
#: names as `choices.RUNNER_PRECISIONS` (which the CLI reads without importing torch).
RUNNERS: dict[str, RunnerFactory] = {
    "torch/fp32": lambda net, _: TorchRunner(net, torch.float32),
    "torch/bf16": lambda net, _: TorchRunner(net, torch.bfloat16),
    "torch/fp16": lambda net, _: TorchRunner(net, torch.float16),  # for GPUs
    "onnxruntime/fp32": lambda net, _: OrtRunner(net, "fp32"),
    "onnxruntime/fp16": lambda net, _: OrtRunner(net, "fp16"),
    "onnxruntime/int8": lambda net, calib: OrtRunner(net, "int8", calib),
}


def check_backend(backend: str, precision: str) -> str:
    """"backend/precision" when a runner (or "auto", which `precision.plan` resolves) exists."""
    name = f"{backend}/{precision}"
    if name not in RUNNERS and not (precision == "auto" and backend in RUNNER_PRECISIONS):
        raise InputError(f"backend {name!r} is not available (choose from {', '.join(RUNNERS)}, or precision auto)")
    return name


def make_runner(net: FrameNet, backend: str = "torch", precision: str = "fp32",
                calibration: np.ndarray | None = None) -> Runner:
    return RUNNERS[check_backend(backend, precision)](net, calibration)
