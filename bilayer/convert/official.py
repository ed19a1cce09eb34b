"""The authors' released checkpoints (saic-violet/bilayer-model) as bilayer checkpoints.

A released run is `RUN_DIR/args.txt` (their options as `key: value` lines) and
`RUN_DIR/checkpoints/<epoch>_<network>.pth` (one state dict per network, saved with spectral norm
as `weight_orig`/`weight_u`/`weight_v`). The base run holds identity_embedder,
texture_generator, keypoints_embedder, inference_generator and discriminator; the enhancer run
(the texture updater stage) holds texture_enhancer and its discriminator.

Every network maps one to one onto ours by renaming (`official_keys`), given a model config that
reproduces their layout exactly (`model_config`: `projection_layout="official"`,
`embedding_tap="features"`, `source_average="encoder"`, `guide_loss_scale=0.5`, their
BatchNorm eps and preprocessing). Every option the weights depend on is checked; an unsupported
value, a missing or unexpected tensor or a tensor of another shape is a one-line `InputError`
naming the file, and nothing is written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilayer.checkpoint import FORMAT, VERSION, atomic_save
from bilayer.config import ModelConfig, from_dict, to_dict
from bilayer.errors import InputError
from bilayer.io.files import check_output_file
from bilayer.nets import NETWORKS, BilayerModel, Discriminator
from bilayer.nets.projector import Projector, head_key

#: Their network name -> ours (a network of `BilayerModel`, or the discriminator).
THEIR_NETWORKS = {
    "identity_embedder": "embedder",
    "texture_generator": "texture_generator",
    "keypoints_embedder": "inference_generator",
    "inference_generator": "inference_generator",
    "texture_enhancer": "updater",
    "discriminator": "discriminator",
}
THEIR_BASE = ("identity_embedder", "texture_generator", "keypoints_embedder", "inference_generator")
#: Their projectors predict from a 32 x 32 x channel_mult view of each embedding (`bottleneck_size`).
BOTTLENECK = 1024

#: Options whose value the weights (or their use) depend on, with the only value we reproduce.
REQUIRED: dict[str, Any] = {
    "emb_norm_layer_type": "none", "emb_activation_type": "leakyrelu", "emb_downsampling_type": "avgpool",
    "emb_apply_masks": True, "emb_no_stickman": False,
    "tex_norm_layer_type": "ada_spade_bn", "tex_pixelwise_bias_type": "none", "tex_activation_type": "leakyrelu",
    "tex_upsampling_type": "nearest", "tex_skip_layer_type": "ada_conv",
    "inf_norm_layer_type": "ada_bn", "inf_activation_type": "leakyrelu", "inf_upsampling_type": "nearest",
    "inf_skip_layer_type": "ada_conv", "inf_pred_segmentation": True,
    "pse_use_harmonic_enc": False, "pse_norm_layer_type": "none", "pse_activation_type": "leakyrelu",
    "pse_input_tensor": "poses",
    "dis_norm_layer_type": "bn", "dis_activation_type": "leakyrelu", "dis_downsampling_type": "avgpool",
    "dis_no_stickman": False,
    "output_stickmen": True, "stickmen_thickness": 2, "wgv_mode": "none",
}
ENHANCER_REQUIRED: dict[str, Any] = {
    "enh_guiding_rgb_loss_type": "sse", "enh_norm_layer_type": "none", "enh_activation_type": "leakyrelu",
    "enh_downsampling_type": "avgpool", "enh_upsampling_type": "nearest",
}
#: Defaults of their parsers for options a run may not list (a key missing from args.txt).
DEFAULTS: dict[str, Any] = {
    "emb_no_stickman": False, "dis_no_stickman": False, "tex_pixelwise_bias_type": "none",
    "pse_norm_layer_type": "none", "pse_use_harmonic_enc": False, "pse_input_tensor": "poses",
    "output_stickmen": True, "stickmen_thickness": 2, "wgv_mode": "none", "eps": 1e-7,
    "enh_num_channels": 64, "enh_max_channels": 128, "enh_bottleneck_tensor_size": 128, "enh_num_blocks": 8,
    "enh_unrolling_depth": 4, "enh_guiding_rgb_loss_type": "sse", "enh_norm_layer_type": "none",
    "enh_activation_type": "leakyrelu", "enh_downsampling_type": "avgpool", "enh_upsampling_type": "nearest",
    "spn_layers": "conv2d, linear", "num_keypoints": 68,
}
#: Options both runs must agree on (the enhancer was trained on top of the base run's networks).
SHARED = ("image_size", "num_keypoints", "emb_num_channels", "emb_max_channels", "emb_output_tensor_size",
          "tex_num_channels", "tex_max_channels", "tex_input_tensor_size", "inf_num_channels", "inf_max_channels",
          "inf_input_tensor_size", "pse_num_channels", "pse_num_blocks", "eps")


def parse_value(text: str) -> Any:
    """One args.txt value, typed as their `parse_args_line` types it (int, float, bool, string)."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return {"True": True, "False": False}.get(text, text)


def names(value: Any) -> list[str]:
    """A comma-separated list option ("a, b") as names."""
    return [v for v in str(value).replace(" ", "").split(",") if v]


@dataclass
class OfficialRun:
    """One released run folder: its options and the epochs it saved."""

    path: Path
    args: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "OfficialRun":
        path = Path(path)
        args_file = path / "args.txt"
        if not path.is_dir():
            raise InputError(f"{path}: not a run folder")
        if not args_file.is_file():
            raise InputError(f"{args_file}: missing (a released run folder holds args.txt and checkpoints/)")
        args = {}
        for number, line in enumerate(args_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition(": ")
            if not sep or not key:
                raise InputError(f"{args_file}: line {number} is not 'key: value'")
            args[key] = parse_value(value)
        return cls(path, {**DEFAULTS, **args})

    def checkpoint(self, epoch: int, network: str) -> Path:
        return self.path / "checkpoints" / f"{epoch}_{network}.pth"

    def latest_epoch(self, networks: tuple[str, ...]) -> int:
        """The last epoch with a file for every network in `networks`."""
        pattern = re.compile(rf"^(\d+)_({'|'.join(THEIR_NETWORKS)})\.pth$")
        saved: dict[int, set[str]] = {}
        for f in (self.path / "checkpoints").glob("*.pth"):
            m = pattern.match(f.name)
            if m:
                saved.setdefault(int(m[1]), set()).add(m[2])
        complete = [epoch for epoch, nets in saved.items() if set(networks) <= nets]
        if not complete:
            raise InputError(f"{self.path / 'checkpoints'}: no epoch with {', '.join(f'<epoch>_{n}.pth' for n in networks)}")
        return max(complete)

    def state_dict(self, epoch: int, network: str) -> dict[str, torch.Tensor]:
        path = self.checkpoint(epoch, network)
        if not path.is_file():
            raise InputError(f"{path}: missing")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for truncated or foreign files
            raise InputError(f"{path}: not a readable state dict ({type(e).__name__})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{path}: not a state dict of tensors")
        return dict(state)


def _check(run: OfficialRun, required: dict[str, Any]) -> None:
    wrong = [f"{k}={run.args.get(k)!r} (supported: {v!r})" for k, v in required.items() if run.args.get(k) != v]
    if wrong:
        raise InputError(f"{run.path / 'args.txt'}: unsupported option{'s' * (len(wrong) > 1)} {', '.join(wrong)}")


def _check_spectral_norm(run: OfficialRun, networks: tuple[str, ...]) -> None:
    """Their spectral norm on every conv and linear layer of `networks` (ours is all or nothing)."""
    layers, spn = set(names(run.args["spn_layers"])), set(names(run.args.get("spn_networks", "")))
    if layers != {"conv2d", "linear"} or not set(networks) <= spn:
        raise InputError(f"{run.path / 'args.txt'}: spn_layers={run.args['spn_layers']!r}, spn_networks="
                         f"{run.args.get('spn_networks')!r} (supported: spectral norm on the conv2d and linear "
                         f"layers of {', '.join(networks)})")


def _int(run: OfficialRun, key: str) -> int:
    value = run.args.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{run.path / 'args.txt'}: {key} must be an integer, got {value!r}")
    return value


def _projection_size(run: OfficialRun, prefix: str) -> int:
    """Their projector views embedding k as (C_k * mult_k) rows of 32*mult_k squared pixels, with
    mult_k = generator channels / embedder channels at block k; ours takes one size per generator."""
    a = run.args
    blocks = int(math.log2(a["image_size"] // a[f"{prefix}_input_tensor_size"]))
    mults = {min(a[f"{prefix}_num_channels"] * 2**i, a[f"{prefix}_max_channels"])
             / min(a["emb_num_channels"] * 2**i, a["emb_max_channels"]) for i in range(blocks, 0, -1)}
    if len(mults) != 1:
        raise InputError(f"{run.path / 'args.txt'}: {prefix} channels are not a constant multiple of emb channels "
                         f"across blocks (unsupported projector view)")
    return int(BOTTLENECK**0.5 * mults.pop())


def model_config(base: OfficialRun, enhancer: OfficialRun | None = None, align_corners: bool = False) -> ModelConfig:
    """Our config of the networks a base run (and an enhancer run) describe, checked option by option."""
    _check(base, REQUIRED)
    a = base.args
    if "folder_postfix" in a and not any(s in str(a["folder_postfix"]) for s in ("2d", "3d")):
        raise InputError(f"{base.path / 'args.txt'}: folder_postfix={a['folder_postfix']!r} selects their ArcSoft "
                         f"keypoints; only the 68-point (2d/3d) landmark image is supported")
    _check_spectral_norm(base, THEIR_BASE)
    size, keypoints = _int(base, "image_size"), _int(base, "num_keypoints")
    if keypoints != 68 or _int(base, "pse_in_channels") != 2 * keypoints:
        raise InputError(f"{base.path / 'args.txt'}: num_keypoints={keypoints}, pse_in_channels="
                         f"{a['pse_in_channels']} (supported: 68 keypoints as 136 inputs)")
    if _int(base, "tex_input_tensor_size") != _int(base, "inf_input_tensor_size"):
        raise InputError(f"{base.path / 'args.txt'}: tex_input_tensor_size and inf_input_tensor_size differ")
    dis_down = int(math.log2(size // _int(base, "dis_output_tensor_size")))
    if _int(base, "dis_num_blocks") != dis_down + 1:
        raise InputError(f"{base.path / 'args.txt'}: dis_num_blocks={a['dis_num_blocks']} (supported: "
                         f"{dis_down + 1}, one block after the downsampling ones)")
    fields: dict[str, Any] = dict(
        image_size=size, num_keypoints=keypoints, generator_input_size=a["tex_input_tensor_size"],
        embedding_size=_int(base, "emb_output_tensor_size"),
        emb_channels=_int(base, "emb_num_channels"), emb_max_channels=_int(base, "emb_max_channels"),
        tex_channels=_int(base, "tex_num_channels"), tex_max_channels=_int(base, "tex_max_channels"),
        inf_channels=_int(base, "inf_num_channels"), inf_max_channels=_int(base, "inf_max_channels"),
        kp_hidden=_int(base, "pse_num_channels"), kp_layers=_int(base, "pse_num_blocks"),
        tex_projection_size=_projection_size(base, "tex"), inf_projection_size=_projection_size(base, "inf"),
        dis_channels=_int(base, "dis_num_channels"), dis_max_channels=_int(base, "dis_max_channels"),
        dis_output_size=a["dis_output_tensor_size"], bn_eps=float(a["eps"]),
        projection_layout="official", embedding_tap="features", source_average="encoder", guide_loss_scale=0.5,
        align_corners=align_corners, preprocessing="official",
    )
    updater = enhancer or base  # without an enhancer run the updater keeps their default shape, untrained
    if enhancer is not None:
        _check(enhancer, ENHANCER_REQUIRED)
        _check_spectral_norm(enhancer, ("texture_enhancer",))
        differ = [k for k in SHARED if enhancer.args.get(k) != a.get(k)]
        if differ:
            raise InputError(f"{enhancer.path / 'args.txt'}: differs from the base run in {', '.join(differ)} "
                             f"(an enhancer trained on another base)")
    u = updater.args
    fields.update(upd_channels=_int(updater, "enh_num_channels"), upd_max_channels=_int(updater, "enh_max_channels"),
                  upd_num_blocks=_int(updater, "enh_num_blocks"), upd_steps=_int(updater, "enh_unrolling_depth"))
    down = int(math.log2(size // _int(updater, "enh_bottleneck_tensor_size")))
    doublings = max(0, math.ceil(math.log2(u["enh_max_channels"] / u["enh_num_channels"])))
    if down != doublings:
        raise InputError(f"{updater.path / 'args.txt'}: enh_bottleneck_tensor_size={u['enh_bottleneck_tensor_size']} "
                         f"needs {down} downsampling blocks, enh_num/max_channels give {doublings}")
    try:
        return from_dict(ModelConfig, fields)
    except InputError as e:
        raise InputError(f"{base.path / 'args.txt'}: {e}") from None


# --- key mapping ----------------------------------------------------------------------------------

#: Parameter names inside a module: theirs (spectral norm hooks, AdaptiveNorm2d) -> ours.
LEAVES = {
    "weight_orig": "parametrizations.weight.original",
    "weight_u": "parametrizations.weight.0._u",
    "weight_v": "parametrizations.weight.0._v",
    "pixel_feats": "features",
}
#: Their pre-activation ResBlock's layers -> ours, by kind: layer indices inside block_feats /
#: block / skip differ with normalization and resampling (networks/utils.py: ResBlock).
RESBLOCKS = {
    "plain": {"block_feats.1": "conv1", "block.0": "conv2", "skip.0": "skip"},  # no norm (E, G_upd)
    "norm": {"block_feats.0": "norm1", "block_feats.2": "conv1", "block_feats.3": "norm2", "block.0": "conv2",
             "skip.0": "skip"},  # BatchNorm (D)
    "up_plain": {"block_feats.2": "conv1", "block.0": "conv2", "skip.1": "skip"},  # upsampling, no norm (G_upd)
    # Adaptive generators: AdaptiveNorm2d's BatchNorm is `norm_layer`, ours `bn`; the skip conv is adaptive.
    "tex": {"block_feats.0": "norm1", "block_feats.0.norm_layer": "norm1.bn", "block_feats.3": "conv1",
            "block_feats.4": "norm2", "block_feats.4.norm_layer": "norm2.bn", "block.0": "conv2"},
    "inf": {"block_feats.0": "norm1", "block_feats.0.norm_layer": "norm1.bn", "block_feats.2": "conv1",
            "block_feats.3": "norm2", "block_feats.3.norm_layer": "norm2.bn", "block.1": "conv2"},
}


def _block(theirs: str, ours: str, kind: str) -> dict[str, str]:
    return {f"{theirs}.{a}": f"{ours}.{b}" for a, b in RESBLOCKS[kind].items()}


def _projector(theirs: str, ours: str, projector: Projector) -> dict[str, str]:
    """Their fc_blocks[k][j] is head j of embedding k, in the order of our `projection_groups`."""
    return {f"{theirs}.fc_blocks.{k}.{j}.{layer}": f"{ours}.heads.{k}.{head_key(k, t)}.{layer}"
            for k, group in enumerate(projector.groups) for j, t in enumerate(group) for layer in range(3)}


def our_networks(cfg: ModelConfig) -> nn.Module:
    """Our five networks of `cfg` under the names our checkpoints use: BilayerModel's and the
    discriminator."""
    model, networks = BilayerModel(cfg), nn.Module()
    for name in NETWORKS:
        networks.add_module(name, getattr(model, name))
    networks.add_module("discriminator", Discriminator(cfg))
    return networks


def module_map(model: nn.Module) -> dict[str, dict[str, str]]:
    """Per network of theirs: their module path -> ours (relative to `THEIR_NETWORKS[network]`);
    `model`: `our_networks`."""
    k = len(model.texture_generator.decoder.blocks)
    embedder = {"net.enc.0": "stem"}
    for i in range(len(model.embedder.down)):
        embedder.update(_block(f"net.enc.{i + 1}", f"down.{i}", "plain"))
    for i in range(len(model.embedder.blocks)):
        embedder.update(_block(f"net.dec_blocks.{i}", f"blocks.{i}", "plain"))

    texture = {"gen_tex.heads.0.0": "head", **_projector("prj_tex", "projector", model.texture_generator.projector)}
    inference = {"gen_inf.heads.0.0": "head_warp", "gen_inf.heads.1.0": "head_lf", "gen_inf.heads.2.0": "head_mask",
                 **_projector("prj_inf", "projector", model.inference_generator.projector)}
    for theirs, ours, kind in (("gen_tex", texture, "tex"), ("gen_inf", inference, "inf")):
        for i in range(k):
            ours.update(_block(f"{theirs}.blocks.{i}", f"decoder.blocks.{i}", kind))
        ours[f"{theirs}.blocks.0.block_feats.0"] = "decoder.blocks.0.norm1.bn"  # a plain affine BatchNorm
        ours.update({f"{theirs}.blocks.{k}": "decoder.out_norm", f"{theirs}.blocks.{k}.norm_layer": "decoder.out_norm.bn"})

    upd = model.updater
    down, body = len(upd.down), len(upd.body)
    updater = {"net.blocks.0": "stem", f"net.blocks.{2 * down + body + 3}": "out.1"}  # + Identity, act before it
    for i in range(down):
        updater.update(_block(f"net.blocks.{1 + i}", f"down.{i}", "plain"))
        updater.update(_block(f"net.blocks.{1 + down + body + i}", f"up.{i}", "up_plain"))
    for i in range(body):
        updater.update(_block(f"net.blocks.{1 + down + i}", f"body.{i}", "plain"))

    discriminator = {"net.first_conv": "stem", "net.final_block.0": "out.0", "net.linear": "out.2"}
    for i in range(len(model.discriminator.blocks)):
        discriminator.update(_block(f"net.blocks.{i}", f"blocks.{i}", "norm"))
    keypoints = {f"net.mlp.{i}": f"mlp.{i}" for i, m in enumerate(model.inference_generator.mlp)
                 if not isinstance(m, torch.nn.LeakyReLU)}
    return {"identity_embedder": embedder, "texture_generator": texture, "keypoints_embedder": keypoints,
            "inference_generator": inference, "texture_enhancer": updater, "discriminator": discriminator}


#: Their tensors that are not module parameters: parameter -> ours, or None for a checked constant.
SPECIAL = {"texture_generator": {"gen_tex_input": "input"}, "inference_generator": {"identity_grid": None}}
TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked", *LEAVES}


def map_state(state: dict[str, torch.Tensor], network: str, modules: dict[str, str], model: nn.Module,
              path: Path) -> dict[str, torch.Tensor]:
    """Their state dict of `network` -> ours (full keys); unknown tensors and constants that are
    not what our model computes are one-line errors naming `path`."""
    prefix, special = THEIR_NETWORKS[network], SPECIAL.get(network, {})
    out, unknown = {}, []
    for key, value in state.items():
        if key in special:
            if special[key] is not None:
                out[f"{prefix}.{special[key]}"] = value
            elif value.shape != model.inference_generator.grid0.shape or not torch.allclose(
                    value, model.inference_generator.grid0, atol=1e-6):
                size = model.inference_generator.grid0.shape[1]
                raise InputError(f"{path}: {key} is not the identity sampling grid of a {size}-px model")
            continue
        module, _, leaf = key.rpartition(".")
        if module in modules and leaf in TENSORS:
            out[f"{prefix}.{modules[module]}.{LEAVES.get(leaf, leaf)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise InputError(f"{path}: {len(unknown)} unexpected tensor{'s' * (len(unknown) > 1)}: {', '.join(unknown[:8])}"
                         + (" ..." if len(unknown) > 8 else ""))
    return out


@dataclass
class Converted:
    path: Path
    cfg: ModelConfig
    networks: list[str]  # ours, as held by the checkpoint
    sources: dict[str, str]  # their network -> the file it was read from


def convert(base: str | Path, out: str | Path, enhancer: str | Path | None = None, epoch: int | None = None,
            enhancer_epoch: int | None = None, align_corners: bool = False) -> Converted:
    """`bilayer convert official`: the released runs `base` (and `enhancer`) -> our checkpoint `out`.

    The latest epoch that has every network is taken unless given. The discriminator comes from
    the enhancer run when it has one (trained last), else from the base run, else it is left out
    (`meta["networks"]` lists what the file holds). Without an enhancer run the texture updater is
    left out and the model has no updater steps (`meta["updater_trained"]` False).
    """
    out = check_output_file(out, (".pt",))
    base_run = OfficialRun.open(base)
    enh_run = OfficialRun.open(enhancer) if enhancer is not None else None
    cfg = model_config(base_run, enh_run, align_corners)
    model = our_networks(cfg)

    epoch = base_run.latest_epoch(THEIR_BASE) if epoch is None else epoch
    files = [(base_run, epoch, name) for name in THEIR_BASE]
    if enh_run is not None:
        enhancer_epoch = enh_run.latest_epoch(("texture_enhancer",)) if enhancer_epoch is None else enhancer_epoch
        files.append((enh_run, enhancer_epoch, "texture_enhancer"))
    found_d = [(run, e) for run, e in ((enh_run, enhancer_epoch), (base_run, epoch))
               if run is not None and run.checkpoint(e, "discriminator").is_file()]
    if found_d:
        files.append((*found_d[0], "discriminator"))

    modules = module_map(model)
    state: dict[str, torch.Tensor] = {}
    for run, e, name in files:
        path = run.checkpoint(e, name)
        state.update(map_state(run.state_dict(e, name), name, modules[name], model, path))
    networks = sorted({THEIR_NETWORKS[name] for _, _, name in files})
    sources: dict[str, list[Path]] = {}
    for run, e, name in files:
        sources.setdefault(THEIR_NETWORKS[name], []).append(run.checkpoint(e, name))
    _check_complete(state, model, sources)

    meta = {
        "stage": "converted", "networks": [n for n in networks if n in NETWORKS],
        "updater_trained": enh_run is not None,
        "converted_from": {name: str(run.checkpoint(e, name)) for run, e, name in files},
    }
    prefix = "discriminator."
    discriminator = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    weights = {k: v for k, v in state.items() if not k.startswith(prefix)}
    atomic_save({"format": FORMAT, "version": VERSION, "model_config": to_dict(cfg), "model": weights, "meta": meta,
                 **({"discriminator": discriminator} if discriminator else {})}, out)
    return Converted(out, cfg, networks, meta["converted_from"])


def _check_complete(state: dict[str, torch.Tensor], model: nn.Module, sources: dict[str, list[Path]]) -> None:
    """Every tensor of each converted network of ours (`sources`: ours -> their files) is there,
    with our shape."""
    expected = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in sources}
    for key, value in expected.items():
        network = key.split(".")[0]
        where = ", ".join(map(str, sources[network]))
        if key not in state:
            missing = [k for k in expected if k.startswith(network + ".") and k not in state]
            raise InputError(f"{where}: {len(missing)} tensor{'s' * (len(missing) > 1)} missing for our "
                             f"{network}: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if state[key].shape != value.shape:
            raise InputError(f"{where}: {key} has shape {tuple(state[key].shape)}, the model of its "
                             f"args.txt needs {tuple(value.shape)}")
