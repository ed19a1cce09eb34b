"""Session fixtures with real media: registry-shipped photos and small videos encoded from them.

Everything heavy is imported inside the fixtures, so tests that need none of it stay fast.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Real inputs in VoxCeleb-like identity folders:

    alice/interview.mp4  H.264 + AAC, 2 s at 25 fps, Grace Hopper's head moving (512x600)
    bob/talk.mkv         MPEG-4 Part 2, 2 s, the astronaut photo's head moving (512x512)
    bob/portrait.png     the astronaut photo itself
    """
    from bilayer.data.samples import SAMPLE_PHOTOS, make_sample_video

    root = tmp_path_factory.mktemp("media")
    (root / "alice").mkdir()
    (root / "bob").mkdir()
    make_sample_video(root / "alice" / "interview.mp4", "grace_hopper", seconds=2.0)
    make_sample_video(root / "bob" / "talk.mkv", "astronaut", seconds=2.0, codec="mpeg4", audio=False)
    shutil.copy(SAMPLE_PHOTOS["astronaut"].path, root / "bob" / "portrait.png")
    return root


@pytest.fixture(scope="session")
def sample_video(media_dir) -> Path:
    return media_dir / "alice" / "interview.mp4"


@pytest.fixture(scope="session")
def annotator():
    from bilayer.data.preprocess import FaceAnnotator

    return FaceAnnotator()


@pytest.fixture(scope="session")
def dataset_dir(media_dir, tmp_path_factory) -> Path:
    """`media_dir` preprocessed once, uninterrupted, by one process."""
    from bilayer.data.preprocess.pipeline import run_preprocess

    out = tmp_path_factory.mktemp("dataset")
    summary = run_preprocess([media_dir], out, progress=False)
    assert summary.clips_ok == 3 and not summary.skipped, summary
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random model with non-trivial BatchNorm statistics, saved as a checkpoint."""
    import torch

    from bilayer.checkpoint import save_checkpoint
    from bilayer.nets import BilayerModel
    from tests.nets_helpers import randomize_norm_stats, tiny_config

    torch.manual_seed(0)
    model = BilayerModel(tiny_config())
    randomize_norm_stats(model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model)
    return path
