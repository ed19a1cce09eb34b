"""Static int8 quantization of the per-frame ONNX graph with ONNX Runtime (reduced-precision path).

Weights are quantized per output channel (int8), activations per tensor (uint8) with ranges
calibrated on keypoints of the avatar's own motion range. The upsampling blocks run entirely in
8 bits (convolutions with VNNI on x86, and the affines, activations, residual adds, pixel
shuffles and crops between them, so no tensor is dequantized between two convolutions). The head
conv and everything after it stay float32: the head predicts the warp field, whose errors the
texture lookup amplifies by the texture's gradient.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

QUANTIZED_OPS = ["Conv", "Mul", "Add", "LeakyRelu", "DepthToSpace", "Slice", "Resize"]


def quantize_int8(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """model: a float32 per-avatar graph (input "keypoints"); calibration: (N, 68, 2) keypoints."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter({"keypoints": k[None].astype(np.float32)} for k in calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    names = [node.name for node in model.graph.node]  # topological order
    head = [node.name for node in model.graph.node if node.op_type == "Conv"][-1]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(model, src, skip_optimization=True, skip_symbolic_shape=True)  # ONNX shape inference
        quantize_static(
            src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=names[names.index(head):],
        )
        return onnx.load(dst)
