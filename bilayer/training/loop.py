"""The training loop: base stage then updater stage (Sec. 3.2-3.5), resumable, 1 or N processes.

Each iteration runs two phases with simultaneous Adam updates (Sec. 3.5):
  1. generator phase: forward + backward of L_G with only the stage's generators trainable
     (base: E, G_tex, G, and G_upd with `joint_updater`; updater: G_upd, the base networks
     frozen in eval mode);
  2. discriminator phase: forward + backward of L_adv^D on the same batch (fakes detached);
then the loss terms are averaged over processes and checked: a NaN/Inf stops the run before any
optimizer step, keeping the last good checkpoint. Between the stages the generators' BatchNorm
statistics are replaced by standing statistics (App. A.1), so both `base.pt` and `final.pt` are
inference checkpoints; `last.pt` carries the full training state (optimizers, grad scalers, RNG,
stage and iteration) and `--resume` continues from it exactly: the data stream is a function of
(seed, iteration) and the L_reg weight a function of the iteration. `weights_from` starts a new
run from another checkpoint's weights (fine-tuning): every network that checkpoint holds is
copied, the others (e.g. the discriminator, which the shipped demo model leaves out) start fresh,
and the optimizers, iteration counters and L_reg schedule start from zero. The discriminator is
the trainer's own network beside the avatar model (`BilayerModel`), saved beside it.

With torchrun, each phase module is wrapped in DistributedDataParallel (gradients averaged over
processes), BatchNorm layers become SyncBatchNorm on CUDA, and rank 0 alone logs and saves.
PyTorch's SyncBatchNorm has no CPU kernel: on gloo each process normalizes with its own batch
statistics and DDP broadcasts rank 0's running statistics, which keeps the replicas identical.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from bilayer.checkpoint import read_checkpoint, save_checkpoint, updater_trained
from bilayer.config import config_changes, to_dict
from bilayer.data.frame import Frame, Pair
from bilayer.errors import InputError
from bilayer.hardware import native_bf16
from bilayer.io.files import atomic_path
from bilayer.io.lock import FolderLock
from bilayer.losses import Objective, warp_weight
from bilayer.nets import BASE_NETWORKS, NETWORKS, BilayerModel, Discriminator
from bilayer.training import distributed
from bilayer.training.config import StageConfig, TrainConfig
from bilayer.training.data import stream
from bilayer.training.log import RunLogger
from bilayer.training.perceptual import perceptual_nets
from bilayer.training.phases import BasePhase, DiscriminatorPhase, PhaseResult, UpdaterPhase
from bilayer.training.state import rng_state, seed_all, set_rng_state
from bilayer.training.stats import standing_statistics

#: Offsets of the data streams' seeds, so the stages and the statistics pass see different pairs.
STREAM_SEEDS = {"base": 0, "updater": 1_000_003, "stats": 2_000_006}
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`TrainConfig.precision` on `device`: "auto" -> "bf16" where it computes bfloat16 natively
    (AMX, AVX512-BF16, CUDA: autocast bf16 is faster there), "fp32" elsewhere (emulated bf16 is
    slower than fp32)."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message is one line naming the terms and the kept checkpoint."""


@dataclass
class Progress:
    stage: str  # "base" | "updater"
    iteration: int  # completed iterations of that stage


@dataclass
class StagePhases:
    name: str  # "base" | "updater"
    g_groups: tuple[str, ...]  # optimizer / network groups of the generator phase ("generators", "updater")
    g_phase: nn.Module  # BasePhase or UpdaterPhase, DDP-wrapped with several processes
    d_phase: nn.Module  # DiscriminatorPhase, likewise


def set_trainable(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset: Dataset | None, run_dir: str | Path, resume: bool = False,
                 weights_from: str | Path | None = None):
        """`dataset` yields the `Pair`s of `bilayer.data.dataset.PairDataset` (needed by `run`);
        `weights_from`: a checkpoint whose networks a new run starts from (not with `resume`)."""
        self.cfg, self.dataset, self.run_dir = cfg, dataset, Path(run_dir)
        self.last = self.run_dir / "checkpoints" / "last.pt"
        if not resume and self.last.exists():
            raise InputError(f"{self.last}: the run directory already has a checkpoint; pass --resume to continue it")
        if resume and weights_from is not None:
            raise InputError(f"{weights_from}: --weights starts a new run, --resume continues {self.last}; "
                             f"pass one of them")
        self.device = distributed.setup(cfg.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        seed_all(cfg.seed)
        model, discriminator = BilayerModel(cfg.model), Discriminator(cfg.model)
        if self.world > 1 and self.device.type == "cuda":  # Sec. 3.5: synchronized BN
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        self.model, self.discriminator = model.to(self.device), discriminator.to(self.device)
        imagenet, face, self.perceptual = perceptual_nets(cfg.perceptual, cfg.loss)
        self.objective = Objective(cfg.loss, imagenet, face).to(self.device).eval()
        self.nets = {  # optimizer groups
            "generators": [getattr(self.model, name) for name in BASE_NETWORKS],
            "updater": [self.model.updater],
            "discriminator": [self.discriminator],
        }
        o = cfg.optim
        self.optimizers = {
            name: torch.optim.Adam([p for net in nets for p in net.parameters()], lr=o.lr, betas=o.betas, eps=o.eps)
            for name, nets in self.nets.items()
        }
        self.precision = resolve_precision(cfg.precision, self.device)
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16") for name in self.nets}
        self.amp_dtype = AMP_DTYPES[self.precision]
        self.progress = Progress("base", 0)
        self.budget: int | None = None  # iterations left before a --stop-after stop
        self.stop_requested = False
        self.signalled = False  # stopped by SIGINT/SIGTERM
        self.weights_from: dict[str, Any] | None = None  # {"checkpoint": path, "networks": [...], ...} of --weights
        if weights_from is not None:
            self._copy_weights(Path(weights_from))
        if resume:
            self._load(self.last)
        # Rank 0 alone writes the run folder and locks it until `run` ends: a second run into it
        # stops here with a one-line error, before writing anything.
        self.lock = FolderLock(self.run_dir)
        if self.rank == 0:
            self.lock.acquire()

    # ----------------------------------------------------------------------------------------- run

    def run(self, stop_after: int | None = None) -> Path:
        """Train (the rest of) both stages; returns the path of checkpoints/last.pt.

        `stop_after`: stop (saving last.pt) after this many iterations, e.g. to fit a job's time
        limit; `--resume` continues exactly where it stopped.
        """
        if self.rank == 0:
            self.lock.acquire()  # held since __init__, unless this trainer has run before
        try:
            return self._run(stop_after)
        finally:
            self.lock.release()  # however the run ends: finished, stopped, diverged, disk full

    def _run(self, stop_after: int | None) -> Path:
        """`run` with the run folder locked."""
        self.budget, self.stop_requested, self.signalled = stop_after, False, False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLogger(self.run_dir, enabled=self.rank == 0)
        self._announce()
        try:
            with self._stop_on_signals():
                if self.progress.stage == "base":
                    self._run_stage("base")
                    if self.stop_requested:
                        return self.last
                    self._finish_base()
                self._run_stage("updater")
                distributed.broadcast_buffers(self.discriminator)  # D's last BN update was per process
                if not self.stop_requested:
                    self._save("last.pt", training=True)
                    self._save("final.pt", training=False)
        finally:
            self.log.close()
            distributed.barrier()
        return self.last

    def _announce(self) -> None:
        lines = [
            f"device {self.device}, {self.world} process(es), precision {self.precision}"
            + (f" (auto: {native_bf16(self.device) or 'no native bf16'})" if self.cfg.precision == "auto" else "") + ", "
            f"model {self.cfg.model_size} at {self.cfg.model.image_size}px",
            f"perceptual ImageNet term: {self.perceptual['imagenet']}",
            f"perceptual face term: {self.perceptual['face']}",
        ]
        if self.world > 1 and self.device.type != "cuda":
            lines.append("SyncBatchNorm needs CUDA: BatchNorm statistics are per process on CPU")
        if self.weights_from is not None:
            held = self.weights_from["networks"]
            fresh = [name for name in (*NETWORKS, "discriminator") if name not in held]
            lines.append(f"networks from {self.weights_from['checkpoint']}: {', '.join(held)}"
                         + (f"; fresh: {', '.join(fresh)}" if fresh else ""))
        if self.progress.iteration or self.progress.stage != "base":
            lines.append(f"resuming from {self.last} at {self.progress.stage} iteration {self.progress.iteration}")
        for line in lines:
            distributed.print0(f"bilayer train: {line}")
        self.log.text("run", "  \n".join(lines))
        if self.rank == 0:
            text = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
            with atomic_path(self.run_dir / "config.yaml", len(text.encode())) as tmp:
                tmp.write_text(text)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current iteration, save last.pt and stop (all ranks agree)."""

        def request_stop(signum: int, frame: object) -> None:
            self.stop_requested = self.signalled = True

        try:
            previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave the handlers alone
            previous = {}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # ---------------------------------------------------------------------------------- one stage

    def _per_rank_batch(self, stage: StageConfig) -> int:
        if stage.batch_size % self.world:
            raise InputError(f"batch_size {stage.batch_size} is not divisible by the {self.world} processes")
        return stage.batch_size // self.world

    def _wrap(self, module: nn.Module, trainable: list[nn.Module], *, find_unused: bool) -> nn.Module:
        """DDP over the phase module; only `trainable` parameters are registered for all-reduce."""
        if self.world == 1:
            return module
        set_trainable([self.model, self.discriminator], False)
        set_trainable(trainable, True)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)

    def prepare(self, name: str) -> StagePhases:
        """Modes, trainable sets and (with several processes) DDP wrappers for stage `name`."""
        base = name == "base"
        g_groups = (("generators", "updater") if self.cfg.joint_updater else ("generators",)) if base else ("updater",)
        self.model.train()
        self.discriminator.train()
        if not base:  # frozen base networks: eval mode keeps their BN and SN buffers unchanged
            set_trainable(self.nets["generators"], False)
            for net in self.nets["generators"]:
                net.eval()
        # With one of these terms off (weight 0, skipped) some generator parameters (e.g. the mask
        # head) get no gradient, and DDP must look for them.
        w = self.cfg.loss
        find_unused = not all((w.adversarial, w.feature_matching, w.pixel, w.mask))
        phase = (BasePhase(self.model, self.discriminator, self.objective, joint=self.cfg.joint_updater) if base
                 else UpdaterPhase(self.model, self.discriminator, self.objective))
        g_phase = self._wrap(phase, self._group_nets(g_groups), find_unused=find_unused)
        d_phase = self._wrap(DiscriminatorPhase(self.discriminator, self.objective), self.nets["discriminator"],
                             find_unused=False)
        return StagePhases(name, g_groups, g_phase, d_phase)

    def _group_nets(self, groups: tuple[str, ...]) -> list[nn.Module]:
        return [net for group in groups for net in self.nets[group]]

    def _run_stage(self, name: str) -> None:
        cfg, stage = self.cfg, getattr(self.cfg, name)
        phases = self.prepare(name)
        per_rank = self._per_rank_batch(stage)
        batches = stream(self.dataset, per_rank, cfg.seed + STREAM_SEEDS[name], self.rank, self.world,
                         self.progress.iteration * per_rank, cfg.num_workers, self.device.type == "cuda")
        bar = tqdm(total=stage.iterations, initial=self.progress.iteration, desc=name, disable=self.rank != 0,
                   dynamic_ncols=True)
        sums: dict[str, float] = {}
        count, tic = 0, time.perf_counter()
        while self.progress.iteration < stage.iterations:
            it = self.progress.iteration
            source, target = next(batches).to(self.device, non_blocking=True)
            values, result = self.step(phases, source, target, it)
            self.progress.iteration = it = it + 1
            bar.update(1)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if it % cfg.log_every == 0 or it == stage.iterations:
                means = {k: v / count for k, v in sums.items()}
                means["it_per_s"] = count / (time.perf_counter() - tic)
                self.log.scalars(name, it, means)
                bar.set_postfix(G=f"{means['G/total']:.3f}", D=f"{means['D/total']:.3f}")
                sums, count, tic = {}, 0, time.perf_counter()
            if it % cfg.image_every == 0 or it == stage.iterations:
                self.log.images(name, it, {"source": source.image, "target": target.image, **result.visuals})
            if self.budget is not None:
                self.budget -= 1
                self.stop_requested |= self.budget <= 0
            if self.stop_requested:
                distributed.print0(f"bilayer train: stopped at {name} iteration {it}, saving {self.last}")
                self._save("last.pt", training=True)
                break
            if it % cfg.checkpoint_every == 0 and it < stage.iterations:
                self._save("last.pt", training=True)
        bar.close()
        del batches  # shuts the loader workers down

    def step(self, phases: StagePhases, source: Frame, target: Frame,
             iteration: int) -> tuple[dict[str, float], PhaseResult]:
        """One iteration (0-based `iteration` of the stage): G phase and D phase forward + backward,
        NaN/Inf check, then both Adam steps. Returns the process-averaged loss terms (and, in the
        base stage, the L_reg weight used) and the G phase's outputs (masked real/fake, visuals)."""
        groups, g_phase, d_phase = phases.g_groups, phases.g_phase, phases.d_phase
        extra = {"warp": warp_weight(self.cfg.loss, iteration)} if phases.name == "base" else {}
        g_nets, d_nets = self._group_nets(groups), self.nets["discriminator"]
        g_opts, d_opt = [self.optimizers[group] for group in groups], self.optimizers["discriminator"]
        # One loss, one scaler: the first group's steps every optimizer of the phase.
        g_scaler, d_scaler = self.scalers[groups[0]], self.scalers["discriminator"]
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())

        set_trainable(g_nets, True)
        set_trainable(d_nets, False)
        with autocast:
            result = g_phase(source, target, **extra)
        g_terms = result.losses
        for opt in g_opts:
            opt.zero_grad(set_to_none=True)
        g_scaler.scale(sum(g_terms.values())).backward()

        set_trainable(g_nets, False)
        set_trainable(d_nets, True)
        with autocast:
            d_terms = d_phase(result.real, result.fake, target.landmark_image)
        d_opt.zero_grad(set_to_none=True)
        d_scaler.scale(sum(d_terms.values())).backward()

        # One all-reduce: loss terms (for the mean over processes and the finiteness check) + stop flag.
        names = [f"G/{k}" for k in g_terms] + [f"D/{k}" for k in d_terms]
        values = torch.stack([t.detach().float() for t in (*g_terms.values(), *d_terms.values())])
        flag = torch.tensor([float(self.stop_requested)], device=values.device)
        packed = distributed.all_reduce_sum(torch.cat([values, flag])) / self.world
        *losses, stop = packed.tolist()
        bad = [n for n, v in zip(names, losses) if not math.isfinite(v)]
        if bad:
            kept = self.last if self.last.exists() else "none written yet"
            raise TrainingDiverged(
                f"non-finite loss ({', '.join(bad)}) at {phases.name} iteration {iteration + 1}; "
                f"stopped before the optimizer step, last good checkpoint: {kept}"
            )
        self.stop_requested |= stop > 0
        for scaler, opts in ((g_scaler, g_opts), (d_scaler, [d_opt])):
            for opt in opts:
                scaler.step(opt)
            scaler.update()
        out = dict(zip(names, losses))
        out["G/total"] = sum(losses[: len(g_terms)])
        out["D/total"] = sum(losses[len(g_terms):])
        if extra:
            out["warp_weight"] = extra["warp"]
        return out, result

    # --------------------------------------------------------------------- stage end, checkpoints

    def _finish_base(self) -> None:
        """Standing BN statistics of the generators (App. A.1), then switch to the updater stage."""
        m, cfg = self.model, self.cfg
        m.eval()
        generators = nn.ModuleList([m.texture_generator, m.inference_generator])  # E has no BN
        batches = stream(self.dataset, self._per_rank_batch(cfg.base), cfg.seed + STREAM_SEEDS["stats"], self.rank,
                         self.world, 0, cfg.num_workers, self.device.type == "cuda")

        def forward(batch: Pair) -> None:
            s, t = batch.to(self.device, non_blocking=True)
            m.render(t.keypoints, m.initialize(s.image, s.landmark_image, s.mask))

        n = standing_statistics(generators, batches, forward, cfg.standing_stats_batches)
        del batches
        distributed.broadcast_buffers(generators)  # identical already with SyncBN; on CPU take rank 0's
        distributed.print0(f"bilayer train: standing BatchNorm statistics from {n} batches")
        self.progress = Progress("updater", 0)
        self._save("last.pt", training=True)
        self._save("base.pt", training=False)

    def _meta(self) -> dict:
        return {
            "stage": self.progress.stage,
            "iteration": self.progress.iteration,
            "perceptual": self.perceptual,
            "warp_weight": warp_weight(self.cfg.loss, self.progress.iteration) if self.progress.stage == "base" else 0.0,
            "world_size": self.world,
            "train_config": to_dict(self.cfg),
            "updater_trained": self._updater_trained(),
            **({"dataset": str(Path(self.dataset.root).resolve())} if hasattr(self.dataset, "root") else {}),
            **({"weights_from": self.weights_from} if self.weights_from is not None else {}),
        }

    def _updater_trained(self) -> bool:
        """Whether G_upd has been trained: by this run (the updater stage, or the base stage with
        joint_updater) or in the --weights checkpoint it was copied from."""
        p, joint = self.progress, self.cfg.joint_updater
        trained_here = (p.stage == "updater" and p.iteration > 0) or (joint and (p.stage != "base" or p.iteration > 0))
        return trained_here or bool(self.weights_from and self.weights_from["updater_trained"])

    def _save(self, name: str, training: bool) -> None:
        """Rank 0 writes checkpoints/<name> atomically; `training` adds the state to resume from."""
        if self.rank != 0:
            return
        state = {}
        if training:
            state = {
                "progress": asdict(self.progress),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
                "rng": rng_state(),
            }
        save_checkpoint(self.run_dir / "checkpoints" / name, self.model, self._meta(), self.discriminator, **state)

    def _copy_weights(self, path: Path) -> None:
        """Copy the weights of every network checkpoint `path` holds (any checkpoint: training,
        inference or the shipped demo model; float16 weights are cast to the run's float32)."""
        ckpt = read_checkpoint(path)
        changed = config_changes(ckpt["model_config"], to_dict(self.cfg.model))
        if changed:
            raise InputError(f"{path}: its model config differs from the run's ({'; '.join(changed)})")
        held = sorted({key.split(".")[0] for key in ckpt["model"]})
        networks = {name: getattr(self.model, name) for name in NETWORKS}
        states = {name: {k[len(name) + 1:]: v for k, v in ckpt["model"].items() if k.startswith(name + ".")}
                  for name in held}
        if "discriminator" in ckpt:
            held.append("discriminator")
            networks["discriminator"], states["discriminator"] = self.discriminator, ckpt["discriminator"]
        for name in held:
            if name not in networks:
                raise InputError(f"{path}: holds an unknown network {name!r}")
            try:
                networks[name].load_state_dict(states[name])
            except RuntimeError as e:
                raise InputError(f"{path}: {name} does not match the model config ({str(e).splitlines()[0]})") from None
        self.weights_from = {"checkpoint": str(path), "networks": held,
                             "updater_trained": "updater" in held and updater_trained(ckpt.get("meta", {}))}

    def _load(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        missing = [k for k in ("progress", "optimizers", "scalers", "rng") if k not in ckpt]
        if missing:
            raise InputError(f"{path}: not a training checkpoint (no {missing[0]!r}), it cannot be resumed")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.discriminator.load_state_dict(ckpt["discriminator"])
        except (RuntimeError, KeyError) as e:
            raise InputError(f"{path}: weights do not match the model config ({str(e).splitlines()[0]})") from None
        for k, opt in self.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        for k, scaler in self.scalers.items():
            scaler.load_state_dict(ckpt["scalers"][k])
        set_rng_state(ckpt["rng"])
        self.progress = Progress(**ckpt["progress"])
        self.weights_from = ckpt["meta"].get("weights_from")
        changed = config_changes(ckpt["meta"].get("train_config", {}), to_dict(self.cfg))
        if changed:
            distributed.print0(f"bilayer train: config differs from {path}: {'; '.join(changed)}")


def train(cfg: TrainConfig, dataset: Dataset, run_dir: str | Path, resume: bool = False,
          stop_after: int | None = None, weights_from: str | Path | None = None) -> Path:
    """Run (or resume with `resume=True`) both stages into `run_dir`, starting from the networks
    of checkpoint `weights_from` if given; returns checkpoints/last.pt."""
    return Trainer(cfg, dataset, run_dir, resume, weights_from).run(stop_after)
