"""ONNX export of the per-frame network (paper App. A.3) and its parity check against PyTorch.

Two graphs, both with `grid_sample` (ONNX GridSample, opset >= 16) and the LF + HF sum inside:

* per avatar (`avatar_onnx`): the folded `FrameNet` of one avatar; the texture is baked in as a
  constant, or is a second input (`texture_input=True`, e.g. to swap in an enhanced texture);
* generic (`generic_onnx`): the inference generator with spectral norm removed and everything
  identity-specific as inputs (texture and the adaptive BN affines / skip-conv weights of every
  block, named like `AvatarState.inference_params`), one file for every avatar.

Inputs: keypoints (B, 68, 2) float32 in [-1, 1] (dynamic batch). Outputs: image (B, 3, H, W) in
[-1, 1] (LF + warped texture, Eq. 1) and mask (B, 1, H, W) in [0, 1]. `--fp16` stores weights and
computes in float16 with float32 inputs/outputs (the paper's mobile deployment ran in FP16, A.3).
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from bilayer.errors import InputError
from bilayer.nets import AvatarState, BilayerModel, InferenceGenerator, warp_texture
from bilayer.runtime.files import atomic_path
from bilayer.runtime.fold import FrameNet, subpixel_form

OPSET = 17
BATCH = {0: "batch"}


def _export(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str], fp16: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, buf, dynamo=False, opset_version=OPSET, input_names=input_names,
            output_names=["image", "mask"], dynamic_axes={"keypoints": BATCH, "image": BATCH, "mask": BATCH},
        )
    model = onnx.load_from_string(buf.getvalue())
    return to_fp16(model) if fp16 else model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute, float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_float_to_float16(model, keep_io_types=True)


def avatar_onnx(net: FrameNet, texture_input: bool = False, fp16: bool = False) -> onnx.ModelProto:
    """The per-frame network of one avatar (its upsampling convs in sub-pixel form, which ONNX
    Runtime runs fastest). texture_input: the texture (1, 3, H, W) is an input, not a constant."""
    graph_net = subpixel_form(net).cpu()
    keypoints = torch.zeros(1, 68, 2)
    if not texture_input:
        return _export(graph_net, (keypoints,), ["keypoints"], fp16)
    if net.texture is None:
        raise ValueError("texture_input export needs the avatar's texture to trace with")
    texture, graph_net.texture = graph_net.texture, None
    return _export(graph_net, (keypoints, texture), ["keypoints", "texture"], fp16)


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm2d as explicit arithmetic on its running statistics. (The exporter's
    BatchNormalization needs static channel counts, which it loses after the adaptive convs.)"""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1))
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def without_spectral_norm(model: BilayerModel) -> InferenceGenerator:
    """A copy of G with each weight materialized once as W / sigma (eval mode) and no spectral
    norm. (Not deepcopy + remove_parametrizations: the copy shares its parametrized classes with
    the original, and removing the property from them breaks the original.)"""
    plain = InferenceGenerator(replace(model.cfg, spectral_norm=False)).eval()
    gen = model.inference_generator
    with torch.no_grad():
        for name, tensor in plain.state_dict().items():
            owner, _, attr = name.rpartition(".")
            tensor.copy_(getattr(gen.get_submodule(owner), attr))
    del plain.projector  # runs once per avatar, not per frame
    return plain


class GenericFrameNet(nn.Module):
    """Inference generator + texture lookup with the avatar's tensors as inputs (no folding)."""

    def __init__(self, model: BilayerModel):
        super().__init__()
        gen = without_spectral_norm(model)
        for module in list(gen.modules()):
            if isinstance(getattr(module, "bn", None), nn.BatchNorm2d):
                module.bn = FrozenBatchNorm(module.bn)
        self.gen, self.align_corners = gen, model.cfg.align_corners
        self.names = [(k, name) for k, specs in enumerate(gen.decoder.block_specs()) for name in specs]

    def input_names(self) -> list[str]:
        return ["keypoints", "texture"] + [f"block{k}.{name}" for k, name in self.names]

    def flat_params(self, state: AvatarState) -> list[Tensor]:
        return [state.inference_params[k][name] for k, name in self.names]

    def forward(self, keypoints: Tensor, texture: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:
        nested: list[dict[str, Tensor]] = [{} for _ in self.gen.decoder.blocks]
        for (k, name), p in zip(self.names, params):
            nested[k][name] = p
        out = self.gen(keypoints, nested)
        texture = texture.expand(keypoints.shape[0], -1, -1, -1)  # traced: the batch stays dynamic
        return out.lf + warp_texture(texture, out.grid, self.align_corners), torch.sigmoid(out.mask_logit)


def generic_onnx(model: BilayerModel, state: AvatarState, fp16: bool = False) -> onnx.ModelProto:
    """The avatar-independent per-frame graph; `state` only provides example inputs to trace."""
    net = GenericFrameNet(model)
    args = (torch.zeros(1, 68, 2), state.texture, *net.flat_params(state))
    return _export(net, args, net.input_names(), fp16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1], measured on the [0, 1] range."""
    mse = float(np.mean(((np.clip(a, -1, 1) - np.clip(b, -1, 1)) / 2) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


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
           fp16: bool = False, texture_input: bool = False) -> ExportResult:
    """`bilayer export`: the per-avatar graph of `source`, or the generic graph; parity-checked,
    then written atomically. The sidecar (`out` with .npz) holds the avatar's input tensors.
    checkpoint None: the shipped demo model."""
    from bilayer.checkpoint import load_model, resolve_checkpoint
    from bilayer.runtime.avatar import Avatar
    from bilayer.runtime.files import check_output_file
    from bilayer.runtime.motion import motion_samples

    out = check_output_file(out, (".onnx",))
    if not generic and source is None:
        raise InputError("export of an avatar needs --source PHOTO (or --generic)")
    if generic and texture_input:
        raise InputError("--texture-input is for a per-avatar export (the --generic graph always takes the texture)")
    checkpoint = resolve_checkpoint(checkpoint)
    if source is not None:
        avatar = Avatar.from_image(source, checkpoint)
        anchor = avatar.source_face.keypoints
    else:
        model, _ = load_model(checkpoint)
        avatar = Avatar(model)
        s = model.cfg.image_size
        avatar.init(torch.zeros(1, 3, s, s), torch.full((1, 3, s, s), -1.0))  # shapes only
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
    return ExportResult(out, result, sidecar)
