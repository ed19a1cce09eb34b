"""The per-frame network as ONNX graphs (paper App. A.3), for ONNX Runtime and `bilayer export`.

Two graphs, both with `grid_sample` (ONNX GridSample, opset >= 16) and the LF + HF sum inside:

* per avatar (`avatar_onnx`): the folded `FrameNet` of one avatar; the texture is baked in as a
  constant, or is a second input (`texture_input=True`, e.g. to swap in an enhanced texture).
  Tracing takes about 0.3 s, so it runs once per network structure (`FrameNet.signature`): later
  avatars get a copy of that graph with their own weights swapped in (the initializers are the
  network's state dict, name for name);
* generic (`generic_onnx`): the inference generator with spectral norm removed and everything
  identity-specific as inputs (texture and the adaptive BN affines / skip-conv weights of every
  block, named like `AvatarState.inference_params`), one file for every avatar.

Inputs: keypoints (B, 68, 2) float32 in [-1, 1] (dynamic batch). Outputs: image (B, 3, H, W) in
[-1, 1] (LF + warped texture, Eq. 1) and mask (B, 1, H, W) in [0, 1]. `fp16` stores weights and
computes in float16 with float32 inputs/outputs (the paper's mobile deployment ran in FP16, A.3).
"""
from __future__ import annotations

import copy
import io
import warnings
from collections import OrderedDict
from dataclasses import replace

import onnx
import onnx.numpy_helper
import torch
from torch import Tensor, nn

from bilayer.nets import AvatarState, BilayerModel, InferenceGenerator, warp_texture
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


#: Traced per-avatar graphs by (network signature, texture_input, fp16), the most recent last.
_TRACES: OrderedDict[tuple, onnx.ModelProto] = OrderedDict()
MAX_TRACES = 4


def avatar_onnx(net: FrameNet, texture_input: bool = False, fp16: bool = False) -> onnx.ModelProto:
    """The per-frame network of one avatar (its upsampling convs in sub-pixel form, which ONNX
    Runtime runs fastest). texture_input: the texture (1, 3, H, W) is an input, not a constant."""
    graph_net = subpixel_form(net if net.grid0.device.type == "cpu" else copy.deepcopy(net).cpu())
    args, names = (torch.zeros(1, 68, 2),), ["keypoints"]
    if texture_input:
        if net.texture is None:
            raise ValueError("texture_input export needs the avatar's texture to trace with")
        args, names = (*args, graph_net.texture), [*names, "texture"]
        graph_net.texture = None
    weights = graph_net.state_dict()
    key = (graph_net.signature(), texture_input, fp16)
    if key in _TRACES:
        _TRACES.move_to_end(key)
        return with_weights(_TRACES[key], weights)
    model = _export(graph_net, args, names, fp16)
    if {init.name for init in model.graph.initializer} == set(weights):  # reusable: every weight by name
        _TRACES[key] = with_weights(model, weights)  # a copy: callers may change theirs
        while len(_TRACES) > MAX_TRACES:
            _TRACES.popitem(last=False)
    return model


def with_weights(template: onnx.ModelProto, weights: dict[str, Tensor]) -> onnx.ModelProto:
    """A copy of `template` whose initializers hold `weights` (same names and shapes; each in the
    template's element type, e.g. float16)."""
    model = onnx.ModelProto()
    model.CopyFrom(template)
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(onnx.numpy_helper.from_array(weights[init.name].detach().numpy().astype(dtype), init.name))
    return model


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
