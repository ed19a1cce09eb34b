"""Distributed training on CPU: 2 processes on the gloo backend (torchrun-style environment)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from bilayer.checkpoint import read_checkpoint
from tests.test_training import ROOT, TINY_YAML

pytestmark = pytest.mark.slow  # several processes

OVERRIDES = ["base.iterations=3", "updater.iterations=2", "standing_stats_batches=2", "log_every=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica(rank: int, world: int, port: int, dataset_dir: str, run_dir: str) -> None:
    """One torchrun-like worker: trains, then saves its own replica's weights for comparison."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bilayer.training import distributed
    from bilayer.training.config import load_train_config
    from bilayer.training.data import open_dataset
    from bilayer.training.loop import Trainer

    cfg = load_train_config(TINY_YAML, OVERRIDES)
    trainer = Trainer(cfg, open_dataset(dataset_dir, cfg), run_dir)
    trainer.run()
    torch.save(trainer.model.state_dict(), f"{run_dir}/replica{rank}.pt")
    distributed.shutdown()


def test_two_gloo_processes_keep_identical_replicas(dataset_dir, tmp_path):
    mp.spawn(replica, args=(2, free_port(), str(dataset_dir), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"replica{r}.pt") for r in (0, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Rank 0 alone wrote the checkpoint, which is its replica, and trained on 2 x 2 samples per step.
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["meta"]["world_size"] == 2 and ckpt["progress"] == {"stage": "updater", "iteration": 2}
    assert all(torch.equal(ckpt["model"][k], a[k]) for k in a)


def test_torchrun_launches_the_cli_on_cpu(dataset_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "bilayer", "train", "--config", str(TINY_YAML), "--data", str(dataset_dir), "--out", str(run),
           *OVERRIDES]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("perceptual face term") == 1  # rank 0 alone prints and logs
    assert "SyncBatchNorm needs CUDA" in proc.stdout
    assert read_checkpoint(run / "checkpoints" / "final.pt")["meta"]["world_size"] == 2
    assert list((run / "tb").glob("events.out.tfevents.*"))
