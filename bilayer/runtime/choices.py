"""Choices of the per-frame runtime without importing torch, so that the CLI offers them while
`bilayer --help` stays instant: the runners' backends and precisions (`backends.RUNNERS`, named
"backend/precision"), the backgrounds of the output video and the driver's crop modes."""
from __future__ import annotations

#: backend -> the precisions it runs at (torch/fp16 is meant for GPUs).
RUNNER_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "fp16", "int8"),
}
BACKENDS: tuple[str, ...] = tuple(RUNNER_PRECISIONS)
#: What users may ask for: "auto" (bf16 where the CPU or GPU computes it natively and the frames pass a
#: quality check, fp32 elsewhere: `precision.plan`) or a runner precision.
PRECISIONS: tuple[str, ...] = ("auto", *dict.fromkeys(p for ps in RUNNER_PRECISIONS.values() for p in ps))
#: Precisions of an avatar's one-time networks alone (`bilayer export`, whose graph has its own).
INIT_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

#: Output background -> its value in [-1, 1] behind the predicted mask; "none": the raw render. The
#: model learns only the foreground (Sec. 3.4), so what it paints behind the mask is untrained.
BACKGROUNDS: dict[str, float | None] = {"black": -1.0, "white": 1.0, "none": None}

#: How a driving video is cropped (`annotator.CROP_MODES`): "smoothed" follows the One-Euro-filtered
#: face box; "exact" crops every frame on its own, as the released code does. The output is
#: rendered in crop coordinates, so per-frame crops pass the detector's noise on as a shaking head.
DRIVER_CROPS: tuple[str, ...] = ("smoothed", "exact")
