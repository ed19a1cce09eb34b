"""ONNX export (App. A.3): per-avatar and generic graphs, parity with PyTorch in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bilayer.cli.main import main
from bilayer.runtime import Avatar
from bilayer.runtime.motion import motion_samples
from tests.nets_helpers import dummy_batch, tiny_avatar

ort = pytest.importorskip("onnxruntime")

from bilayer.export.onnx import parity  # noqa: E402
from bilayer.runtime.onnx import GenericFrameNet, avatar_onnx, generic_onnx  # noqa: E402


@pytest.fixture(scope="module")
def avatar():
    return tiny_avatar()[0]


def session(graph: onnx.ModelProto):
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def keypoints(avatar, n=3) -> np.ndarray:
    return motion_samples(avatar.source_keypoints[0].numpy(), n, seed=2)


def ops(graph: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in graph.graph.node}


@pytest.mark.parametrize("fp16", [False, True])
def test_avatar_graph_matches_pytorch(avatar, fp16):
    graph = avatar_onnx(avatar.frame_net, fp16=fp16)
    assert [i.name for i in graph.graph.input] == ["keypoints"]
    assert "GridSample" in ops(graph)  # the texture lookup is inside the graph
    kp = keypoints(avatar)
    with torch.no_grad():
        ref = avatar.frame_net(torch.from_numpy(kp))
    result = parity(session(graph), ref, {"keypoints": kp})
    if fp16:
        assert result.psnr >= 40
    else:
        assert result.max_abs <= 1e-4


def test_texture_as_a_second_input(avatar):
    graph = avatar_onnx(avatar.frame_net, texture_input=True)
    assert [i.name for i in graph.graph.input] == ["keypoints", "texture"]
    kp = keypoints(avatar)
    texture = avatar.frame_net.texture.numpy()
    with torch.no_grad():
        ref = avatar.frame_net(torch.from_numpy(kp))
    assert parity(session(graph), ref, {"keypoints": kp, "texture": texture}).max_abs <= 1e-4
    # A different texture changes the output: it is really an input, not a baked constant.
    image, _ = session(graph).run(None, {"keypoints": kp, "texture": -texture})
    assert np.abs(image - ref[0].numpy()).max() > 1e-3


def test_generic_graph_serves_any_avatar(avatar):
    graph = generic_onnx(avatar.model, avatar.state)
    net = GenericFrameNet(avatar.model)
    assert [i.name for i in graph.graph.input] == net.input_names()
    kp = keypoints(avatar)
    other = Avatar(avatar.model)
    x = dummy_batch(avatar.model.cfg, b=1, seed=7)
    other.initialize(x)
    sess = session(graph)
    for a in (avatar, other):  # same graph, two identities: matches each folded network
        feeds = dict(zip(net.input_names(), [kp, *(t.numpy() for t in [a.state.texture, *net.flat_params(a.state)])]))
        with torch.no_grad():
            ref = a.frame_net(torch.from_numpy(kp))
        assert parity(sess, ref, feeds).max_abs <= 1e-4


def test_cli_export_writes_a_checked_graph(media_dir, tiny_checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "avatar.onnx"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--source", str(media_dir / "bob" / "portrait.png")]
    assert main([*args, "--out", str(out), "--texture-input"]) == 0
    assert "max abs error" in capsys.readouterr().out
    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["keypoints", "texture"]
    assert np.load(out.with_suffix(".npz"))["texture"].shape == (1, 3, 64, 64)
    generic = tmp_path / "generic.onnx"
    monkeypatch.setattr("bilayer.checkpoint.DEMO_CHECKPOINT", tiny_checkpoint)  # --checkpoint: the demo model
    assert main(["export", "--generic", "--out", str(generic), "--fp16"]) == 0
    assert "PSNR" in capsys.readouterr().out and generic.is_file()
    assert main([*args, "--out", str(tmp_path / "avatar.pt")]) == 2
    assert ".onnx" in capsys.readouterr().err


def test_cli_export_generic_rejects_texture_input(tmp_path, capsys):
    out = tmp_path / "generic.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--generic", "--texture-input",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--texture-input is for a per-avatar export" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_export_writes_the_graph_and_its_sidecar_together(media_dir, tiny_checkpoint, tmp_path, monkeypatch):
    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        main(["export", "--checkpoint", str(tiny_checkpoint), "--source", str(media_dir / "bob" / "portrait.png"),
              "--texture-input", "--out", str(tmp_path / "avatar.onnx")])
    assert list(tmp_path.iterdir()) == []  # neither the graph without its texture nor a temporary file
