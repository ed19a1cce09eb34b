"""Speed paths of the runtime and the choices around them: `precision.plan` ("auto"), the quality
check and its fp32 fallbacks, the oneDNN per-frame network, models prepared for inference, the
stages of an initialization and the ONNX trace cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from bilayer import hardware
from bilayer.metrics.psnr import psnr
from bilayer.nets import BilayerModel
from bilayer.runtime import Avatar, avatar, backends, onednn, onnx as runtime_onnx, precision
from bilayer.runtime.avatar import for_inference
from bilayer.runtime.motion import motion_samples
from tests.nets_helpers import dummy_batch, randomize_norm_stats, tiny_avatar, tiny_config

CPU = torch.device("cpu")


def with_native_bf16(monkeypatch, native: str | None) -> None:
    """Pretend the CPU does (a name) or does not (None) compute bfloat16 natively."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)


def tiny_model() -> BilayerModel:
    torch.manual_seed(0)
    model = BilayerModel(tiny_config())
    randomize_norm_stats(model)
    return model


def render_poses(av: Avatar, source_keypoints: torch.Tensor, n: int = 4) -> np.ndarray:
    poses = torch.from_numpy(motion_samples(source_keypoints[0].numpy(), n, seed=3))
    return av.render(poses)[0].float().numpy()


@pytest.mark.parametrize("requested, backend, native, expected", [
    ("auto", "torch", "AMX-BF16", (torch.bfloat16, "bf16")),
    ("auto", "onnxruntime", "AVX512-BF16", (torch.bfloat16, "fp32")),  # ONNX Runtime: no bf16 kernels on CPUs
    ("auto", "torch", None, (torch.float32, "fp32")),
    ("auto", "onnxruntime", None, (torch.float32, "fp32")),
    ("fp32", "torch", "AMX-BF16", (torch.float32, "fp32")),
    ("bf16", "torch", None, (torch.bfloat16, "bf16")),  # asked for: emulated, but as asked
    ("fp16", "torch", "AMX-BF16", (torch.float32, "fp16")),  # fp16 one-time networks only on GPUs
    ("int8", "onnxruntime", "AMX-BF16", (torch.float32, "int8")),
])
def test_plan_follows_what_the_cpu_has(monkeypatch, requested, backend, native, expected):
    with_native_bf16(monkeypatch, native)
    chosen = precision.plan(requested, backend, CPU)
    assert (chosen.init_dtype, chosen.frames) == expected
    if requested == "auto":
        assert (native or "no native bf16") in chosen.reason
        assert str(chosen).endswith(f"one-time networks {precision.NAMES[expected[0]]}")


def test_cpu_info_names_the_cpu_and_its_speed_flags():
    info = hardware.cpu_info()
    assert info["name"] and set(info["flags"]) <= set(hardware.SPEED_FLAGS)


def test_auto_without_native_bf16_is_exactly_fp32(monkeypatch):
    with_native_bf16(monkeypatch, None)
    reference, x = tiny_avatar()
    auto, _ = tiny_avatar(precision="auto")
    assert auto.precision == "fp32" and "no native bf16" in auto.precision_note
    assert torch.equal(auto.state.texture, reference.state.texture)
    np.testing.assert_array_equal(render_poses(auto, x.keypoints), render_poses(reference, x.keypoints))


def test_auto_with_native_bf16_runs_bf16_within_the_quality_bar(monkeypatch):
    with_native_bf16(monkeypatch, "AMX-BF16")  # where the CPU lacks it, bf16 is emulated: slower, same values
    reference, x = tiny_avatar()
    auto, _ = tiny_avatar(precision="auto")
    assert auto.precision == "bf16", auto.precision_note
    assert "one-time networks bf16" in auto.precision_note and "dB vs fp32" in auto.precision_note
    assert psnr(auto.state.texture.numpy(), reference.state.texture.numpy()) >= precision.MIN_PSNR_DB
    assert psnr(render_poses(auto, x.keypoints), render_poses(reference, x.keypoints)) >= precision.MIN_PSNR_DB


def test_auto_falls_back_to_fp32_frames_when_the_quality_check_fails(monkeypatch):
    with_native_bf16(monkeypatch, "AMX-BF16")
    monkeypatch.setattr(avatar, "MIN_PSNR_DB", 200.0)  # no bf16 frame reaches it
    reference, x = tiny_avatar()
    auto, _ = tiny_avatar(precision="auto")
    assert auto.precision == "fp32"
    assert "fp32 (bf16 gave" in auto.precision_note and "< 200 dB" in auto.precision_note
    fp32_runner = backends.make_runner(auto.frame_net, "torch", "fp32")
    poses = torch.from_numpy(motion_samples(x.keypoints[0].numpy(), 3, seed=3))
    np.testing.assert_array_equal(auto.render(poses)[0].numpy(), fp32_runner(poses)[0].numpy())
    # The one-time networks stayed bf16 (their texture passed): only the frames fall back.
    assert not torch.equal(auto.state.texture, reference.state.texture)


def test_auto_redoes_a_non_finite_bf16_initialization_in_fp32(monkeypatch):
    with_native_bf16(monkeypatch, "AMX-BF16")
    one_time = Avatar._one_time_networks

    def overflowing(self, *args):
        state = one_time(self, *args)
        if args[-2] == torch.bfloat16:  # dtype
            state.texture[..., 0, 0] = math.inf
        return state

    monkeypatch.setattr(Avatar, "_one_time_networks", overflowing)
    reference, _ = tiny_avatar()
    auto, _ = tiny_avatar(precision="auto")
    assert "one-time networks fp32 (bf16 gave non-finite values)" in auto.precision_note
    assert torch.equal(auto.state.texture, reference.state.texture)


def test_explicit_precision_is_checked_at_construction_and_auto_is_accepted():
    from bilayer.errors import InputError

    with pytest.raises(InputError, match="torch/int8"):
        Avatar(tiny_model(), "torch", "int8")
    assert backends.check_backend("onnxruntime", "auto") == "onnxruntime/auto"
    with pytest.raises(InputError, match="or precision auto"):
        backends.check_backend("tensorrt", "auto")


@pytest.mark.skipif(not onednn.supported(CPU, torch.float32), reason="this PyTorch build has no oneDNN conv ops")
def test_onednn_frame_net_equals_the_eager_folded_network():
    """Same function as `FrameNet` (fused tails, packed weights, the skip inside the last
    transposed conv, the tanh form of the mask's sigmoid): float32 to rounding, for a batch."""
    av, x = tiny_avatar()
    poses = torch.from_numpy(motion_samples(x.keypoints[0].numpy(), 3, seed=2))
    net = onednn.OneDnnFrameNet(av.frame_net, torch.float32)
    with torch.inference_mode():
        (image, mask), (ref_image, ref_mask) = net(poses), av.frame_net(poses)
    assert image.dtype == mask.dtype == torch.float32 and image.shape == ref_image.shape
    assert (image - ref_image).abs().max() <= 5e-5 and (mask - ref_mask).abs().max() <= 5e-5
    if onednn.supported(CPU, torch.bfloat16):
        with torch.inference_mode():
            low_image, low_mask = onednn.OneDnnFrameNet(av.frame_net, torch.bfloat16)(poses)
        assert low_image.dtype == torch.float32
        assert psnr(low_image.numpy(), ref_image.numpy()) >= precision.MIN_PSNR_DB
        assert psnr(low_mask.numpy(), ref_mask.numpy()) >= precision.MIN_PSNR_DB


def test_torch_runner_falls_back_to_an_eager_copy_without_onednn(monkeypatch):
    av, x = tiny_avatar()
    monkeypatch.setattr(onednn, "supported", lambda device, dtype: False)
    runner = backends.TorchRunner(av.frame_net, torch.float32)
    assert type(runner.net).__name__ == "FrameNet" and runner.net is not av.frame_net
    with torch.inference_mode():
        ref = av.frame_net(x.keypoints)[0]
    assert (runner(x.keypoints)[0] - ref).abs().max() <= 5e-5  # channels-last: other summation order


def test_for_inference_materializes_spectral_norm_once_and_keeps_the_function():
    model = tiny_model()
    x = dummy_batch(model.cfg, b=1)
    model.eval()
    with torch.no_grad():
        before = model.initialize(x.image, x.landmark_image, x.mask).texture
    assert any(parametrize.is_parametrized(m) for m in model.modules())
    assert for_inference(model) is model and for_inference(model) is model  # idempotent
    assert not model.training and not any(parametrize.is_parametrized(m) for m in model.modules())
    with torch.no_grad():
        after = model.initialize(x.image, x.landmark_image, x.mask).texture
    assert (after - before).abs().max() <= 1e-5


def test_initialization_reports_each_stage(tiny_checkpoint, media_dir):
    av, _ = tiny_avatar()
    steps = [f"updater step {m + 1}" for m in range(av.model.cfg.upd_steps)]
    assert list(av.init_stages_ms) == ["embedder", "projections", "texture generator", "updater guide", *steps,
                                       "folding", "backend"]
    assert all(ms >= 0 for ms in av.init_stages_ms.values())
    photo = Avatar.from_image(media_dir / "bob" / "portrait.png", tiny_checkpoint, precision="fp32")
    assert list(photo.init_stages_ms)[:4] == ["detection", "landmarks", "crop", "mask"]
    assert list(photo.init_stages_ms)[4:] == list(av.init_stages_ms)


def test_onnx_runners_of_one_model_trace_once_and_match_a_fresh_trace(monkeypatch):
    pytest.importorskip("onnxruntime")
    runtime_onnx._TRACES.clear()
    exports = []
    export = runtime_onnx._export
    monkeypatch.setattr(runtime_onnx, "_export", lambda *a: exports.append(1) or export(*a))
    first, x = tiny_avatar("onnxruntime", "fp32")
    model = first.model
    other = Avatar(model, "onnxruntime", "fp32")
    shifted = x._replace(image=x.image.flip(-1))  # another identity: other weights, same graph
    other.initialize(shifted)
    assert len(exports) == 1
    runtime_onnx._TRACES.clear()
    fresh = Avatar(model, "onnxruntime", "fp32")
    fresh.initialize(shifted)
    assert len(exports) == 2
    poses = torch.from_numpy(motion_samples(x.keypoints[0].numpy(), 3, seed=2))
    np.testing.assert_array_equal(other.render(poses)[0].numpy(), fresh.render(poses)[0].numpy())
    assert not np.array_equal(other.render(poses)[0].numpy(), first.render(poses)[0].numpy())
