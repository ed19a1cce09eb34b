"""Runtime speed: init and per-frame time of each model size, backend and precision, against the
FLOP floor of this machine and a FOMM medium baseline (paper App. B.2, Table 2; A.3).

For small / medium / large at 256x256, batch 1, random weights (speed does not depend on them),
and each "backend/precision" (torch/auto: the default, `runtime.precision.plan` resolves it):

* the CPU's name and speed flags (AMX, AVX512-BF16, ...), and its GEMM peak: the best of
  torch.matmul and a oneDNN 1x1 convolution (both GEMMs) per precision;
* init_ms: `Avatar.initialize` from tensors (embedder, adaptive params, texture, M = 4 updater
  steps, A.3 folding, backend preparation: ONNX export + session, int8 calibration, the quality
  check of "auto"), median of 2 after one warm-up;
* photo_init_ms: `Avatar.from_image` from a decoded photo (the sample photo of `bilayer demo`) to
  the first renderable frame, the face annotator already loaded (it is loaded once per process);
  init_stages_ms: the stages of that run (detection, landmarks, crop, mask, embedder, projections,
  texture generator, updater guide and steps, folding, backend);
* texture_psnr_db: the texture after initialization against torch/fp32's (reduced-precision
  one-time networks);
* frame_ms: median of >= 200 `Avatar.render` calls after warm-up;
* floor_ms = 2 x GMACs / peak, with the model's per-frame GMACs as `bilayer bench macs` counts
  them (the paper's way; 1.11 / 4.31 / 17.0); floor_executed_ms uses the MACs the folded network
  actually executes instead (fewer: skip convs before upsampling, upsampling convs as transposed
  convs, fused heads), the stricter bound of how close the kernels run to the GEMM peak;
* psnr_db of each reduced-precision output against torch/fp32 (on source-like poses);
* FOMM: a dense-motion hourglass + occlusion-aware generator with the vox-256 structure at the
  paper's "medium" size (App. B.1: generator channels 32 -> 256, hourglass halved too), run the
  same way (torch fp32, channels-last); its MACs are counted with torch.utils.flop_counter.

    python benchmarks/runtime.py [--json OUT.json] [--sizes medium] [--frames 200] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bilayer.config import PAPER_GMACS, model_config
from bilayer.data.frame import Frame
from bilayer.metrics.complexity import frame_macs
from bilayer.metrics.psnr import psnr
from bilayer.nets import BilayerModel
from bilayer.runtime import Avatar
from bilayer.data.samples import load_photo
from bilayer.runtime.backends import RUNNERS
from bilayer.runtime.motion import motion_samples
from bilayer.hardware import cpu_info
from bilayer.runtime.precision import plan

CPU_BACKENDS = ["torch/fp32", "torch/auto", "torch/bf16", "onnxruntime/fp32", "onnxruntime/fp16", "onnxruntime/int8"]
GPU_BACKENDS = ["torch/fp32", "torch/auto", "torch/fp16"]
PHOTO = "grace_hopper"  # `bilayer demo`'s
MAX_OTHER_LOAD = 0.10
PAPER_P40 = {"init_ms": 53.0, "frame_ms": 4.0, "fomm_frame_ms": 13.0}  # Table 2, medium models


# ---- timing ---------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class OtherLoad:
    """Share of the machine's CPU time used by OTHER processes while a measurement ran (from
    /proc/stat and this process's CPU time); timings are only meaningful when it is small."""

    def __enter__(self) -> "OtherLoad":
        self.start = (self._busy(), sum(os.times()[:2]), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy, own = self._busy() - self.start[0], sum(os.times()[:2]) - self.start[1]
        wall = time.perf_counter() - self.start[2]
        self.fraction = max(0.0, busy - own) / (wall * os.cpu_count()) if busy >= 0 else 0.0

    @staticmethod
    def _busy() -> float:
        """Busy CPU seconds of the whole machine (-1 where /proc/stat does not exist)."""
        try:
            fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        except OSError:
            return -1.0
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def median_ms(fn: Callable[[], object], runs: int, warmup: int, device: torch.device, tries: int = 3) -> float:
    """Median wall time of `runs` calls after `warmup`. A measurement during which other
    processes used more than 10 % of the CPUs is repeated (up to `tries`); the least disturbed
    one is kept and, if still disturbed, flagged on stderr."""
    best = None
    for _ in range(tries):
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        with OtherLoad() as load:
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                sync(device)
                times.append(time.perf_counter() - start)
        if best is None or load.fraction < best[1]:
            best = (1000 * statistics.median(times), load.fraction)
        if load.fraction <= MAX_OTHER_LOAD:
            break
    if best[1] > MAX_OTHER_LOAD:
        print(f"    (other processes used {100 * best[1]:.0f} % of the CPUs during this measurement)", file=sys.stderr)
    return best[0]


def gemm_peak(dtype: torch.dtype, device: torch.device) -> float:
    """Best GFLOP/s of a 2048^3 matmul and of a 1x1 conv (oneDNN on CPU) as a GEMM of the same size."""
    n = 2048
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    x = torch.randn(1, n, 32, 64, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    best = 0.0
    with torch.inference_mode():
        for fn in (lambda: a @ b, lambda: F.conv2d(x, w)):
            best = max(best, 2 * n**3 / median_ms(fn, 10, 3, device) / 1e6)
    return best


def int8_gemm_peak() -> float:
    n = 2048
    a, b = (torch.randint(-128, 127, (n, n), dtype=torch.int8) for _ in range(2))
    return 2 * n**3 / median_ms(lambda: torch._int_mm(a, b), 10, 3, torch.device("cpu")) / 1e6


# ---- FOMM medium (Siarohin et al. 2019, vox-256 structure), random weights -------------------------


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]


def down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(*conv_bn_relu(cin, cout), nn.AvgPool2d(2))


def up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2.0), *conv_bn_relu(cin, cout))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Hourglass(nn.Module):
    """U-Net of FOMM's dense motion network: down blocks, then up blocks concatenating skips."""

    def __init__(self, base: int, cin: int, blocks: int, cap: int):
        super().__init__()
        ch = lambda i: min(cap, base * 2**i)  # noqa: E731
        self.downs = nn.ModuleList(down(cin if i == 0 else ch(i), ch(i + 1)) for i in range(blocks))
        self.ups = nn.ModuleList(up((1 if i == blocks - 1 else 2) * ch(i + 1), ch(i)) for i in reversed(range(blocks)))
        self.out_channels = base + cin

    def forward(self, x: Tensor) -> Tensor:
        skips = [x]
        for d in self.downs:
            skips.append(d(skips[-1]))
        out = skips.pop()
        for u in self.ups:
            out = torch.cat([u(out), skips.pop()], dim=1)
        return out


class FommMedium(nn.Module):
    """Dense motion (10 keypoints with jacobians, 1/4 resolution hourglass, softmax masks,
    occlusion) + occlusion-aware generator (2 down, 6 residual, 2 up blocks), per frame.

    vox-256 widths are generator 64 -> 512 and hourglass 64 -> 1024 (53.6 GMACs here; the paper's
    large FOMM: 53.7). Medium halves both (App. B.1): 13.9 GMACs here and in the paper.
    """

    def __init__(self, size: int = 256, kp: int = 10, base: int = 32, cap: int = 256,
                 motion_base: int = 32, motion_cap: int = 512):
        super().__init__()
        self.kp, self.small = kp, size // 4
        self.hourglass = Hourglass(motion_base, (kp + 1) * 4, 5, motion_cap)
        self.mask = nn.Conv2d(self.hourglass.out_channels, kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels, 1, 7, padding=3)
        ch = lambda i: min(cap, base * 2**i)  # noqa: E731
        self.first = nn.Sequential(*conv_bn_relu(3, base, 7))
        self.downs = nn.Sequential(down(ch(0), ch(1)), down(ch(1), ch(2)))
        self.bottleneck = nn.Sequential(*[ResBlock(ch(2)) for _ in range(6)])
        self.ups = nn.Sequential(up(ch(2), ch(1)), up(ch(1), ch(0)))
        self.final = nn.Conv2d(base, 3, 7, padding=3)
        ys, xs = torch.meshgrid(*(torch.linspace(-1, 1, self.small),) * 2, indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], -1))  # (h, w, 2)

    def forward(self, source: Tensor, kp_src: Tensor, kp_drv: Tensor, jac: Tensor) -> Tensor:
        """source (B, 3, H, W); keypoints (B, K, 2); jacobians (B, K, 2, 2) -> (B, 3, H, W)."""
        b, k, h = source.shape[0], self.kp, self.small
        small = F.interpolate(source, size=(h, h), mode="bilinear", antialias=True)  # (B, 3, h, h)
        gauss = lambda p: torch.exp(-((self.grid - p[:, :, None, None]) ** 2).sum(-1) / 0.02)  # noqa: E731
        heat = gauss(kp_drv) - gauss(kp_src)  # (B, K, h, h)
        heat = torch.cat([heat.new_zeros(b, 1, h, h), heat], 1)[:, :, None]  # (B, K+1, 1, h, h), background first
        local = torch.einsum("bkij,bkyxj->bkyxi", jac, self.grid - kp_drv[:, :, None, None]) + kp_src[:, :, None, None]
        motions = torch.cat([self.grid.expand(b, 1, h, h, 2), local], 1)  # (B, K+1, h, h, 2)
        warped = F.grid_sample(small.repeat_interleave(k + 1, 0), motions.flatten(0, 1), align_corners=False)
        x = torch.cat([heat, warped.view(b, k + 1, 3, h, h)], 2).flatten(1, 2)  # (B, (K+1)*4, h, h)
        feats = self.hourglass(x)
        mask = torch.softmax(self.mask(feats), 1)[..., None]  # (B, K+1, h, h, 1)
        flow = (motions * mask).sum(1)  # (B, h, h, 2)
        out = F.grid_sample(self.downs(self.first(source)), flow, align_corners=False)
        out = out * torch.sigmoid(self.occlusion(feats))
        return torch.sigmoid(self.final(self.ups(self.bottleneck(out))))


def fomm_inputs(b: int = 1, size: int = 256, kp: int = 10) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(b, 3, size, size, generator=g), torch.rand(b, kp, 2, generator=g) * 2 - 1,
            torch.rand(b, kp, 2, generator=g) * 2 - 1, torch.eye(2).expand(b, kp, 2, 2).clone())


def gmacs(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops() / 2e9


# ---- bi-layer ------------------------------------------------------------------------------------


def bench_size(size: str, backends: list[str], peaks: dict[str, float], frames: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = BilayerModel(model_config(size)).eval().to(device)
    s = model.cfg.image_size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    landmark_image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    keypoints = torch.rand(1, 68, 2, generator=g) * 1.2 - 0.6
    source = Frame(image, landmark_image, keypoints, torch.ones(1, 1, s, s))
    poses = torch.from_numpy(motion_samples(keypoints[0].numpy(), 8, seed=1))
    photo = load_photo(PHOTO)
    counted = frame_macs(model.cfg)["macs"] / 1e9  # the paper's way, as `bilayer bench macs` (CPU copy)
    results, reference = {}, None
    for name in backends:
        backend, precision = name.split("/")
        avatar = Avatar(model, backend, precision)
        init_ms = median_ms(lambda: avatar.initialize(source), 2, 1, device)
        frame_ms = median_ms(lambda: avatar.render(keypoints), frames, 20, device)
        executed = avatar.frame_net.macs() / 1e9
        peak = peaks.get(avatar.precision, peaks["fp32"])
        entry = {"precision": avatar.precision, "precision_note": avatar.precision_note, "init_ms": init_ms,
                 "frame_ms": frame_ms, "floor_ms": 2 * counted / peak * 1e3, "floor_executed_ms": 2 * executed / peak * 1e3}
        with torch.inference_mode():
            images = torch.cat([avatar.render(p[None])[0].float().cpu() for p in poses])
        texture = avatar.state.texture.cpu().numpy()
        if name == "torch/fp32":
            reference = images, texture
        elif reference is not None:
            entry["psnr_db"] = psnr(images.numpy(), reference[0].numpy())
            entry["texture_psnr_db"] = psnr(texture, reference[1])
        photo_runs = []

        def from_photo() -> None:
            photo_runs[:] = [Avatar.from_image(photo, model, backend, precision)]

        entry["photo_init_ms"] = median_ms(from_photo, 2, 1, device)
        entry["init_stages_ms"] = photo_runs[-1].init_stages_ms
        results[name] = entry
        quality = "".join(f"   {what} {entry[key]:.1f} dB" for what, key in
                          (("PSNR", "psnr_db"), ("texture", "texture_psnr_db")) if key in entry)
        print(f"  {name:18s} init {init_ms:7.1f} ms   photo->avatar {entry['photo_init_ms']:7.1f} ms   "
              f"frame {frame_ms:6.2f} ms ({avatar.precision})   floor {entry['floor_ms']:5.2f} ms "
              f"({frame_ms / entry['floor_ms']:.2f}x)   executed floor {entry['floor_executed_ms']:5.2f} ms "
              f"({frame_ms / entry['floor_executed_ms']:.2f}x){quality}")
        print("    " + ", ".join(f"{k} {v:.0f}" for k, v in entry["init_stages_ms"].items()) + " ms")
    return {"gmacs_executed": executed, "gmacs_paper_count": counted, "backends": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--backends", nargs="+", choices=sorted([*RUNNERS, "torch/auto", "onnxruntime/auto"]),
                   help="default: all for the device")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    backends = args.backends or (GPU_BACKENDS if device.type == "cuda" else CPU_BACKENDS)

    peaks = {"fp32": gemm_peak(torch.float32, device)}
    peaks["bf16" if device.type == "cpu" else "fp16"] = gemm_peak(
        torch.bfloat16 if device.type == "cpu" else torch.float16, device)
    if device.type == "cpu":
        peaks["int8"] = int8_gemm_peak()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    cpu, default = cpu_info(), plan("auto", "torch", device)
    print(f"CPU: {cpu['name']} ({', '.join(cpu['flags']) or 'no AVX2'})")
    print(f"{where}, 256x256, batch 1; GEMM peak " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"default precision (auto): {default.frames} frames ({default})")

    report: dict = {"gemm_gflops": peaks["fp32"], "gemm_gflops_by_precision": peaks, "device": where, "cpu": cpu,
                    "default_precision": default.frames, "default_precision_note": str(default), "models": {}}
    details = {}
    for size in args.sizes:
        print(f"{size} (paper {PAPER_GMACS[size]} GMACs)")
        r = bench_size(size, backends, peaks, args.frames, device)
        print(f"  executed {r['gmacs_executed']:.2f} GMACs per frame (the paper's way of counting: "
              f"{r['gmacs_paper_count']:.2f})")
        report["models"][size] = r["backends"]
        details[size] = {k: r[k] for k in ("gmacs_executed", "gmacs_paper_count")}
    report["gmacs"] = details

    fomm = FommMedium().eval().to(device).to(memory_format=torch.channels_last)
    inputs = tuple(t.to(device) for t in fomm_inputs())
    with torch.inference_mode():
        report["fomm_frame_ms"] = median_ms(lambda: fomm(*inputs), max(20, args.frames // 4), 5, device)
    report["fomm_gmacs"] = gmacs(lambda: fomm(*inputs))
    print(f"FOMM medium: {report['fomm_gmacs']:.1f} GMACs (paper 13.9), {report['fomm_frame_ms']:.1f} ms per frame")
    if "medium" in report["models"] and "torch/fp32" in report["models"]["medium"]:
        ours = report["models"]["medium"]["torch/fp32"]["frame_ms"]
        print(f"bi-layer medium torch/fp32 is {report['fomm_frame_ms'] / ours:.1f}x faster than FOMM medium "
              f"(paper, P40: init {PAPER_P40['init_ms']:.0f} ms, frame {PAPER_P40['frame_ms']:.0f} ms vs FOMM "
              f"{PAPER_P40['fomm_frame_ms']:.0f} ms)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
