"""`bilayer export`: the per-frame network as an ONNX file, parity-checked with ONNX Runtime (App. A.3).

The graphs are built by `bilayer.runtime.onnx` (per avatar: the folded network of one photo;
generic: every avatar's tensors as inputs, written beside it as OUT.npz); this module picks the
avatar, checks ONNX Runtime against PyTorch on the same poses and writes the files atomically.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from bilayer.data.frame import Frame
from bilayer.errors import InputError
from bilayer.io.files import atomic_path
from bilayer.metrics.psnr import psnr
from bilayer.runtime.choices import INIT_PRECISIONS
from bilayer.runtime.onnx import GenericFrameNet, avatar_onnx, generic_onnx


@dataclass
class Parity:
    max_abs: float  # max |ORT - PyTorch| over image and mask
    psnr: float  # of the image, dB

    def __str__(self) -> str:
        return f"max abs error {self.max_abs:.2e}, PSNR {self.psnr:.1f} dB"


def parity(session, reference: tuple[Tensor, Tensor], feeds: dict[str, np.ndarray]) -> Parity:
    """Compare an onnxruntime session's (image, mask) with PyTorch's on the same inputs."""
    image, mask = session.run(["image", "mask"], feeds)
    ref_image, ref_mask = (t.detach().float().numpy() for t in reference)
    err = max(float(np.abs(image - ref_image).max()), float(np.abs(mask - ref_mask).max()))
    return Parity(err, psnr(image, ref_image))


#: Parity thresholds of ONNX Runtime against PyTorch on the same inputs.
MAX_ABS_FP32, MIN_PSNR_FP16 = 1e-4, 40.0


@dataclass
class ExportResult:
    path: Path
    parity: Parity
    sidecar: Path | None  # avatar tensors the graph takes as inputs (texture / params), if any
    initialization: str  # the precision of the avatar's one-time networks, and why (`Avatar.precision_note`)


def check_parity(model: onnx.ModelProto, reference: nn.Module, feeds: dict[str, np.ndarray], fp16: bool) -> Parity:
    """Run the graph in ONNX Runtime and compare with `reference(*feeds)`; raise when off."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = reference(*(torch.from_numpy(v) for v in feeds.values()))
    result = parity(session, ref, feeds)
    if (fp16 and result.psnr < MIN_PSNR_FP16) or (not fp16 and result.max_abs > MAX_ABS_FP32):
        raise RuntimeError(f"ONNX Runtime does not match PyTorch: {result}")
    return result


def export(checkpoint: str | Path | None, out: str | Path, source: str | Path | None = None, generic: bool = False,
           fp16: bool = False, texture_input: bool = False, precision: str = "auto") -> ExportResult:
    """`bilayer export`: the per-avatar graph of `source`, or the generic graph; parity-checked,
    then written atomically. The sidecar (`out` with .npz) holds the avatar's input tensors.
    checkpoint None: the shipped demo model. `precision` ("auto", "fp32" or "bf16"): the avatar's
    initialization, as in `Avatar` (the graph computes in float32, or float16 with `fp16`)."""
    from bilayer.checkpoint import load_model, resolve_checkpoint
    from bilayer.io.files import check_output_file
    from bilayer.runtime.avatar import Avatar
    from bilayer.runtime.motion import motion_samples

    out = check_output_file(out, (".onnx",))
    if not generic and source is None:
        raise InputError("export of an avatar needs --source PHOTO (or --generic)")
    if generic and texture_input:
        raise InputError("--texture-input is for a per-avatar export (the --generic graph always takes the texture)")
    if precision not in INIT_PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(INIT_PRECISIONS)}, got {precision!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    if source is not None:
        avatar = Avatar.from_image(source, checkpoint, precision=precision)
        anchor = avatar.source_face.keypoints
    else:
        model, _ = load_model(checkpoint)
        avatar = Avatar(model, precision=precision)
        s = model.cfg.image_size  # an avatar of a blank source: the graph's shapes only
        avatar.initialize(Frame(torch.zeros(1, 3, s, s), torch.full((1, 3, s, s), -1.0), torch.zeros(1, 68, 2),
                                torch.ones(1, 1, s, s)))
        anchor = np.zeros((68, 2), np.float32)
    keypoints = motion_samples(anchor, 4)  # (4, 68, 2)

    arrays: dict[str, np.ndarray] = {}
    if generic:
        net = GenericFrameNet(avatar.model)
        graph = generic_onnx(avatar.model, avatar.state, fp16)
        tensors = [avatar.state.texture, *net.flat_params(avatar.state)]
        arrays = dict(zip(net.input_names()[1:], (t.numpy() for t in tensors)))
        reference: nn.Module = net
    else:
        graph = avatar_onnx(avatar.frame_net, texture_input, fp16)
        reference = avatar.frame_net
        if texture_input:
            arrays = {"texture": avatar.frame_net.texture.numpy()}
    result = check_parity(graph, reference, {"keypoints": keypoints, **arrays}, fp16)
    sidecar = out.with_suffix(".npz") if arrays and source is not None else None
    with atomic_path(out) as tmp:  # a failed export leaves no partial file
        tmp.write_bytes(graph.SerializeToString())
        if sidecar is not None:  # renamed into place just before the graph: never a graph without it
            with atomic_path(sidecar) as tmp_npz:
                np.savez(tmp_npz, **arrays)
    return ExportResult(out, result, sidecar, avatar.precision_note)
