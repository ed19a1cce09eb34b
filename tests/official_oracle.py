"""The authors' released code as a test oracle (never part of the package).

Builds their networks from ../shared/reference/bilayer-model (imported, not copied) with the
options of their training scripts, gives them realistic random weights, saves them in the
released run layout (`RUN_DIR/args.txt`, `RUN_DIR/checkpoints/<epoch>_<net>.pth`) and runs their
inference the way their `infer.py` does (runner in eval mode, spectral norm removed). Used by
scripts/make_official_fixture.py, tests/test_official.py and benchmarks/official.py.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "bilayer-model"
BASE_NETS = ("identity_embedder", "texture_generator", "keypoints_embedder", "inference_generator")
ENHANCER_NETS = (*BASE_NETS, "texture_enhancer")
#: Options their scripts pass wrongly or leave out (see ../shared/reference/README.md): harmonic
#: encoding off (the released shapes), source poses embedded and source data predicted (the
#: enhancer needs them), the 68-point stickman branch, a CPU run, no losses (their modules import
#: torchvision and face_alignment).
FIXES: dict[str, Any] = {
    "pse_use_harmonic_enc": False, "pse_emb_source_pose": True, "inf_pred_source_data": True,
    "folder_postfix": "2d_crop", "num_gpus": 0, "losses_train": "", "losses_test": "",
    "enh_apply_masks": False, "inf_apply_masks": False,
}
#: A reduced model (64 px, narrow layers) for a small committed fixture. Their projector view needs
#: tex channels == emb channels and inf channels == half of them at every block.
TINY: dict[str, Any] = {
    "image_size": 64, "emb_num_channels": 8, "emb_max_channels": 16, "tex_num_channels": 8,
    "tex_max_channels": 16, "inf_num_channels": 4, "inf_max_channels": 8, "pse_num_channels": 32,
    "dis_num_channels": 8, "dis_max_channels": 16, "dis_num_blocks": 4, "enh_num_channels": 8,
    "enh_max_channels": 16, "enh_bottleneck_tensor_size": 32, "enh_num_blocks": 2,
}


def available() -> bool:
    return (REFERENCE / "networks" / "utils.py").is_file()


def _modules():
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    return importlib.import_module("runners.default"), importlib.import_module("runners.utils")


def _typed(text: str) -> Any:
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(text)
    return {"True": True, "False": False}.get(text, text)


def script_options(name: str) -> dict[str, Any]:
    """`--key value` pairs of one of their training scripts (scripts/<name>.sh), typed."""
    words = shlex.split((REFERENCE / "scripts" / f"{name}.sh").read_text().replace("\\\n", " "))
    options: dict[str, list[str]] = {}
    for word in words[words.index("train.py") + 1:]:  # a value may be several words (<<TODO: ...>>)
        if word.startswith("--"):
            options[word[2:]] = []
        else:
            options[next(reversed(options))].append(word)
    return {k: _typed(" ".join(v)) for k, v in options.items()}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Their deprecation warnings off (grid_sample without align_corners, meshgrid without indexing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def official_args(enhancer: bool, **overrides: Any) -> argparse.Namespace:
    """Their options for the base (or enhancer) run: parser defaults, then their script's values,
    then `FIXES`, then `overrides`."""
    default, _ = _modules()
    options = script_options("train_texture_enhancer_8gpus" if enhancer else "train_base_model_8gpus")
    options = {**options, **FIXES, **overrides}
    nets = ", ".join(ENHANCER_NETS if enhancer else BASE_NETS)
    argv = ["oracle", "--networks_train", f"{nets}, discriminator", "--networks_test", nets,
            "--losses_train", "", "--losses_test", ""]
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    parser.add = parser.add_argument
    with _argv(argv):
        default.RunnerWrapper.get_args(parser)
        args, _ = parser.parse_known_args(argv[1:])
    for key, value in options.items():
        setattr(args, key, value)
    args.networks_test = nets
    args.rank, args.world_size = 0, 1
    return args


def build(args: argparse.Namespace, name: str) -> nn.Module:
    """One of their network wrappers with their spectral norm."""
    _, utils = _modules()
    with quiet():
        net = importlib.import_module(f"networks.{name}").NetworkWrapper(args)
    layers = utils.parse_str_to_list(args.spn_layers, sep=",")
    return net.apply(lambda m: utils.spectral_norm(m, apply_to=layers, eps=args.eps))


# --- realistic random weights ------------------------------------------------------------------

def converge_spectral_norm(net: nn.Module, iterations: int = 30) -> None:
    """Power iterations on every weight (fresh u, v make outputs explode)."""
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "weight_orig"):
                w = m.weight_orig.flatten(1)  # (out, in * k * k)
                v = F.normalize(torch.randn(w.shape[1]), dim=0)
                for _ in range(iterations):
                    u = F.normalize(w @ v, dim=0)
                    v = F.normalize(w.t() @ u, dim=0)
                m.weight_u.copy_(u)
                m.weight_v.copy_(v)


def random_inputs(args: argparse.Namespace, batch: int, seed: int) -> dict[str, Tensor]:
    """Smooth random frames, masks and face-like keypoints as their data dict (n = t = 1)."""
    _modules()
    ds_utils = importlib.import_module("datasets.utils")
    g = torch.Generator().manual_seed(seed)
    s = args.image_size

    def smooth(channels: int) -> Tensor:  # (B, C, s, s) low-frequency noise in [-1, 1]
        return torch.tanh(2 * F.interpolate(torch.randn(batch, channels, 6, 6, generator=g), size=(s, s),
                                            mode="bicubic", align_corners=False))

    def poses() -> Tensor:  # (B, 136) in [-0.8, 0.8]
        return (torch.rand(batch, 68, 2, generator=g) * 1.6 - 0.8).view(batch, -1)

    source_poses, target_poses = poses(), poses()
    return {
        "source_imgs": smooth(3)[:, None], "source_segs": (smooth(1) * 0.5 + 0.5)[:, None],
        "source_poses": source_poses[:, None], "target_poses": target_poses[:, None],
        "source_stickmen": ds_utils.draw_stickmen(args, source_poses)[:, None],
        "target_stickmen": ds_utils.draw_stickmen(args, target_poses)[:, None],
        "target_imgs": smooth(3)[:, None],
    }


def moderate_outputs(nets: dict[str, nn.Module], factor: float) -> None:
    """Divide the features entering each generator's heads by `factor` (their output norm's
    running variance times factor^2): LF, warp offsets and texture of the moderate size trained
    weights produce (warp offsets within about +-0.2 at factor 30) instead of a random network's
    saturated ones. A saturated, rough warp of a rough texture amplifies float rounding a hundred
    times (their code against itself in another memory layout differs by ~1e-3 on the image)."""
    with torch.no_grad():
        for name in ("texture_generator", "inference_generator"):
            blocks = nets[name].gen_tex.blocks if name == "texture_generator" else nets[name].gen_inf.blocks
            blocks[-2].norm_layer.running_var.mul_(factor**2)  # the norm before the last activation


def calibrate(nets: dict[str, nn.Module], args: argparse.Namespace, batches: int = 3, seed: int = 0,
              moderate: float | None = None) -> None:
    """Realistic random weights: converged spectral norm, random BatchNorm affines, and running
    statistics averaged over `batches` train-mode passes of random inputs (standing statistics);
    `moderate`: `moderate_outputs` by that factor."""
    g = torch.Generator().manual_seed(seed)
    for net in nets.values():
        converge_spectral_norm(net)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average
                m.reset_running_stats()
                if m.affine:
                    with torch.no_grad():
                        m.weight.uniform_(0.7, 1.3, generator=g)
                        m.bias.normal_(0, 0.2, generator=g)
        net.train()
    with torch.no_grad(), quiet():
        for i in range(batches):
            data = random_inputs(args, 2, seed + 1 + i)
            for name in ENHANCER_NETS:
                if name in nets:
                    data = nets[name](data, [], nets)
            if "discriminator" in nets:
                image = torch.cat([data["target_imgs"][:, 0], data["pred_target_imgs"][:, 0]])
                stickmen = data["target_stickmen"][:, 0].repeat(2, 1, 1, 1)
                nets["discriminator"].net(torch.cat([image, stickmen], 1))
    for net in nets.values():
        net.eval()
    if moderate is not None:
        moderate_outputs(nets, moderate)


def save_run(run_dir: Path, args: argparse.Namespace, nets: dict[str, nn.Module], epoch: int) -> None:
    """Their run layout: args.txt (`key: value`, sorted) and checkpoints/<epoch>_<net>.pth."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "args.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(vars(args).items())))
    for name, net in nets.items():
        torch.save(net.state_dict(), run_dir / "checkpoints" / f"{epoch}_{name}.pth")


def make_runs(root: Path, seed: int = 0, moderate: float | None = None, batches: int = 3,
              **overrides: Any) -> tuple[Path, Path]:
    """A base and an enhancer run of realistic random weights under `root` (`calibrate`); returns
    their folders."""
    torch.manual_seed(seed)
    base_args = official_args(False, **overrides)
    enh_args = official_args(True, **overrides)
    nets = {name: build(enh_args, name) for name in (*ENHANCER_NETS, "discriminator")}
    calibrate(nets, enh_args, batches, seed, moderate)
    base, enhancer = root / "base", root / "enhancer"
    save_run(base, base_args, {n: nets[n] for n in (*BASE_NETS, "discriminator")}, epoch=2)
    save_run(enhancer, enh_args, {n: nets[n] for n in ("texture_enhancer", "discriminator")}, epoch=1)
    return base, enhancer


# --- their inference -----------------------------------------------------------------------------

def read_run_args(run_dir: Path, **overrides: Any) -> argparse.Namespace:
    """args.txt read the way their InferenceWrapper does (their `parse_args_line`), then overrides."""
    _, utils = _modules()
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    for line in (run_dir / "args.txt").read_text().splitlines(keepends=True):
        key, value, kind = utils.parse_args_line(line)
        parser.add_argument(f"--{key}", type=kind, default=value)
    args, _ = parser.parse_known_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


class OfficialModel:
    """Their runner as their infer.py sets it up: base networks from the base run, the enhancer
    from its run, eval mode, spectral norm removed; and their discriminator the same way."""

    def __init__(self, base: Path, enhancer: Path, base_epoch: int = 2, enhancer_epoch: int = 1):
        default, utils = _modules()
        nets = ", ".join(ENHANCER_NETS)  # their README's inference options: no discriminator in the runner
        self.args = read_run_args(enhancer, **FIXES, networks_test=nets, spn_networks=nets,
                                  networks_to_train="texture_enhancer")
        with quiet():
            self.runner = default.RunnerWrapper(self.args, training=False)
        for name in BASE_NETS:
            self.runner.nets[name].load_state_dict(torch.load(base / "checkpoints" / f"{base_epoch}_{name}.pth"))
        for name in ("texture_enhancer",):
            self.runner.nets[name].load_state_dict(torch.load(enhancer / "checkpoints" / f"{enhancer_epoch}_{name}.pth"))
        self.runner.apply(utils.remove_spectral_norm)
        self.runner.eval()
        self.discriminator = build(self.args, "discriminator")
        self.discriminator.load_state_dict(torch.load(enhancer / "checkpoints" / f"{enhancer_epoch}_discriminator.pth"))
        self.discriminator.apply(utils.remove_spectral_norm).eval()

    @torch.no_grad()
    def __call__(self, data: dict[str, Tensor]) -> dict[str, Any]:
        """One forward of their runner on a data dict (b, n|t, ...) -> their full data dict."""
        with quiet():
            self.runner({k: v.clone() for k, v in data.items() if k != "target_imgs"})
        return dict(self.runner.data_dict)

    @torch.no_grad()
    def discriminate(self, image: Tensor, stickmen: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 3, H, W) images and landmark images -> their scores (B, 1, h, w) and block features."""
        return self.discriminator.net(torch.cat([image, stickmen], 1))


def their_outputs(model: OfficialModel, seed: int) -> dict:
    """Inputs (ours: (1, ...) tensors) and their outputs for one random source/target pair."""
    data = random_inputs(model.args, 1, seed)
    out = model(data)
    scores, features = model.discriminate(data["target_imgs"][:, 0], data["target_stickmen"][:, 0])
    source = {"image": data["source_imgs"][:, 0], "landmark_image": data["source_stickmen"][:, 0],
              "keypoints": data["source_poses"][:, 0].view(1, 68, 2), "mask": data["source_segs"][:, 0]}
    target = {"image": data["target_imgs"][:, 0], "landmark_image": data["target_stickmen"][:, 0],
              "keypoints": data["target_poses"][:, 0].view(1, 68, 2), "mask": torch.ones_like(data["source_segs"][:, 0])}
    return {
        "source": source,  # the fields of a batch of one `Frame` (torch.load(weights_only=True) reads dicts)
        "target": target,
        "embeddings": out["source_idt_embeds"],
        "texture": out["pred_tex_hf_rgbs"][:, 0],
        "enhanced_texture": out["pred_enh_tex_hf_rgbs"][:, 0],
        "lf": out["pred_target_delta_lf_rgbs"][:, 0],
        "grid": out["pred_target_uvs"][:, 0],
        "mask": out["pred_target_segs"][:, 0],
        "image": out["pred_target_imgs"][:, 0],
        "enhanced_image": out["pred_enh_target_imgs"][:, 0],
        "scores": scores,
        "features": features,
    }


def stickmen_uint8(args: argparse.Namespace, poses: np.ndarray) -> np.ndarray:
    """Their `draw_stickmen` of (N, 68, 2) normalized keypoints as uint8 (N, S, S, 3)."""
    _modules()
    ds_utils = importlib.import_module("datasets.utils")
    images = ds_utils.draw_stickmen(args, torch.from_numpy(poses).reshape(len(poses), -1))  # (N, 3, S, S)
    return np.round((images.numpy() / 2 + 0.5) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


# --- ours against theirs ------------------------------------------------------------------------

def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def frames(theirs: dict):
    """(source, target): their inputs as our batches of one `Frame`."""
    from bilayer.data.frame import Frame

    return Frame(**theirs["source"]), Frame(**theirs["target"])


@torch.no_grad()
def network_diffs(checkpoint: Path, theirs: dict) -> dict[str, float]:
    """Max |ours - theirs| of every network's output on their inputs (our modules of a converted
    `checkpoint`, unfolded, the discriminator included)."""
    from bilayer.checkpoint import load_model
    from bilayer.nets import Discriminator

    model, ckpt = load_model(checkpoint)
    model = model.eval()
    discriminator = Discriminator(model.cfg).eval()
    discriminator.load_state_dict(ckpt["discriminator"])
    source, target = frames(theirs)
    embeddings = model.embedder(source.image, source.landmark_image, source.mask)
    params = model.inference_generator.adaptive_params(embeddings)
    out = model.inference_generator(target.keypoints, params)
    state = model.initialize(source.image, source.landmark_image, source.mask)
    with torch.enable_grad():
        enhanced = model.refine(state, source.keypoints, source.image)
    d = discriminator(target.image, target.landmark_image)
    return {
        "embeddings": max(max_diff(a, b) for a, b in zip(embeddings, theirs["embeddings"])),
        "texture": max_diff(state.texture, theirs["texture"]),
        "lf": max_diff(out.lf, theirs["lf"]),
        "grid": max_diff(out.grid, theirs["grid"]),
        "mask": max_diff(torch.sigmoid(out.mask_logit), theirs["mask"]),
        "image": max_diff(model.render(target.keypoints, state).image, theirs["image"]),
        "enhanced_texture": max_diff(enhanced.texture, theirs["enhanced_texture"]),
        "enhanced_image": max_diff(model.render(target.keypoints, enhanced).image, theirs["enhanced_image"]),
        "scores": max_diff(d.scores, theirs["scores"]),
        "features": max(max_diff(a, b) for a, b in zip(d.features, theirs["features"])),
    }


def avatar_diffs(model, theirs: dict, backend: str = "torch", enhanced: bool = True) -> tuple[float, float]:
    """Max |ours - theirs| of the image and mask rendered by `Avatar` (the folded per-frame net)."""
    from bilayer.runtime import Avatar

    source, target = frames(theirs)
    avatar = Avatar(model, backend, "fp32")
    avatar.initialize(source)
    image, mask = avatar.render(target.keypoints)
    return max_diff(image, theirs["enhanced_image" if enhanced else "image"]), max_diff(mask, theirs["mask"])
