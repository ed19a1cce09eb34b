"""Model core: shapes, gradients, spectral norm, adaptivity, caching, ablation, complexity."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bilayer.cli.main import main
from bilayer.config import PAPER_GMACS, ConfigError, load_yaml, ModelConfig, model_config
from bilayer.nets import BilayerModel, Discriminator, identity_grid, warp_texture
from bilayer.nets.layers import AdaptiveConv1x1, AdaSPADE, Conv1x1, PixelwiseBias
from bilayer.runtime import Avatar
from bilayer.training.stats import standing_statistics
from tests.nets_helpers import dummy_batch, tiny_config


@pytest.mark.parametrize("size", ["small", "medium", "large", "baseline"])
def test_shapes_every_size(size):
    cfg = tiny_config(size)
    model = BilayerModel(cfg)
    x = dummy_batch(cfg, b=2)
    emb = model.embedder(x.image, x.landmark_image, x.mask)
    assert [e.shape[1:] for e in emb] == [(32, 8, 8), (32, 8, 8), (16, 8, 8), (8, 8, 8)]
    state = model.initialize(x.image, x.landmark_image, x.mask)
    assert state.texture.shape == (2, 3, 64, 64)
    out = model.render(x.keypoints, state)
    assert out.image.shape == out.lf.shape == out.hf.shape == (2, 3, 64, 64)
    assert out.mask_logit.shape == (2, 1, 64, 64)
    assert out.grid.shape == out.warp_delta.shape == (2, 64, 64, 2)
    d = Discriminator(cfg)(out.image, x.landmark_image)
    assert d.scores.shape == (2, 1, 8, 8)
    assert len(d.features) == 4  # 3 downsampling blocks to 8x8 + one block at 8x8


def test_full_size_medium_shapes():
    """The default 256 px medium model: K = 6 embeddings with the paper's channel bottlenecks."""
    cfg = model_config("medium")
    model = BilayerModel(cfg).eval()
    img = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        emb = model.embedder(img, img)
        assert [e.shape[1] for e in emb] == [512, 512, 512, 256, 128, 64]
        assert all(e.shape[-2:] == (8, 8) for e in emb)
        state = model.initialize(img, img)
        out = model.render(torch.zeros(1, 68, 2), state)
        d = Discriminator(cfg)(out.image, img)
    assert out.image.shape == (1, 3, 256, 256)
    assert d.scores.shape == (1, 1, 8, 8)
    assert [f.shape[1] for f in d.features] == [128, 256, 512, 512, 512, 512]
    widths = [b.conv2.weight.shape[0] for b in model.inference_generator.decoder.blocks]
    assert widths == [256, 256, 256, 128, 64, 32]
    assert model.inference_generator.mlp[0].weight.shape == (256, 136)
    assert model.inference_generator.mlp[-1].weight.shape == (256 * 16, 256)


def _nonzero_grads(module: nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def test_every_parameter_gets_a_gradient():
    cfg = tiny_config()
    model, discriminator = BilayerModel(cfg).train(), Discriminator(cfg).train()
    x = dummy_batch(cfg, b=3)
    state = model.initialize(x.image, x.landmark_image, x.mask)
    out = model.render(x.keypoints, state)
    fake = discriminator(out.image, x.landmark_image)
    # Generator objective: pixel + mask + warp terms and the adversarial score.
    g_loss = (out.image - x.image).abs().mean() + out.mask_logit.abs().mean() + fake.scores.mean()
    g_loss = g_loss + out.warp_delta.abs().mean() + (out.lf - x.image).abs().mean()
    g_loss.backward()
    for net in (model.embedder, model.texture_generator, model.inference_generator):
        missing = [n for n, ok in _nonzero_grads(net).items() if not ok]
        assert not missing, f"{type(net).__name__}: no gradient for {missing[:5]}"

    model.zero_grad()
    discriminator.zero_grad()
    both = discriminator(torch.cat([x.image, out.image.detach()]), torch.cat([x.landmark_image] * 2))
    d_loss = torch.relu(1 - both.scores[:3]).mean() + torch.relu(1 + both.scores[3:]).mean()
    d_loss.backward()
    missing = [n for n, ok in _nonzero_grads(discriminator).items() if not ok]
    assert not missing, f"discriminator: no gradient for {missing[:5]}"

    model.zero_grad()
    state = model.initialize(x.image, x.landmark_image, x.mask)
    refined = model.refine(state, x.keypoints, x.image)
    (model.render(x.keypoints, refined).image - x.image).abs().mean().backward()
    missing = [n for n, ok in _nonzero_grads(model.updater).items() if not ok]
    assert not missing, f"updater: no gradient for {missing[:5]}"


def test_spectral_norm_on_every_conv_and_linear():
    model = BilayerModel(tiny_config())
    layers = [(n, m) for net in (model, Discriminator(tiny_config())) for n, m in net.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) > 50
    plain = [n for n, m in layers if not parametrize.is_parametrized(m, "weight")]
    assert not plain, f"layers without spectral norm: {plain[:5]}"
    off = BilayerModel(tiny_config(spectral_norm=False))
    assert not any(parametrize.is_parametrized(m) for m in off.modules())


def test_adaptive_params_depend_on_the_source():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = BilayerModel(cfg).eval()
    a, b = dummy_batch(cfg, b=1, seed=1), dummy_batch(cfg, b=1, seed=2)
    kp = a.keypoints
    with torch.no_grad():
        sa = model.initialize(a.image, a.landmark_image)
        sb = model.initialize(b.image, b.landmark_image)
        ra, rb = model.render(kp, sa), model.render(kp, sb)
        # Same texture, different adaptive params -> the inference generator's output differs.
        rmix = model.render(kp, type(sa)(sb.inference_params, sa.texture))
    assert (ra.image - rb.image).abs().max() > 1e-4
    assert (ra.lf - rmix.lf).abs().max() > 1e-4
    p_a, p_b = sa.inference_params[-1]["skip.weight"], sb.inference_params[-1]["skip.weight"]
    assert (p_a - p_b).abs().max() > 1e-6


def test_render_does_not_touch_initialization_networks():
    cfg = tiny_config()
    model = BilayerModel(cfg)
    calls = {"embedder": 0, "texture_generator": 0, "projector": 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    model.embedder.register_forward_hook(counter("embedder"))
    model.texture_generator.head.register_forward_hook(counter("texture_generator"))
    model.inference_generator.projector.register_forward_hook(counter("projector"))
    x = dummy_batch(cfg, b=1)
    avatar = Avatar(model)
    avatar.initialize(x)
    after_init = dict(calls)
    assert after_init == {"embedder": 1, "texture_generator": 1, "projector": 1}
    for _ in range(3):
        image, mask = avatar.render(x.keypoints[0])
    assert calls == after_init
    assert image.shape == (1, 3, 64, 64) and mask.shape == (1, 1, 64, 64)
    assert 0 <= mask.min() and mask.max() <= 1


def test_avatar_rejects_bad_keypoints():
    from bilayer.errors import InputError

    cfg = tiny_config()
    avatar = Avatar(BilayerModel(cfg))
    x = dummy_batch(cfg, b=1)
    avatar.initialize(x)
    with pytest.raises(InputError, match="expected"):
        avatar.render(torch.zeros(67, 2))
    bad = torch.zeros(68, 2)
    bad[3, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        avatar.render(bad)


def test_identity_warp_reproduces_the_texture():
    tex = torch.rand(2, 3, 32, 48) * 2 - 1
    grid = identity_grid(32, 48).expand(2, -1, -1, -1)
    assert torch.allclose(warp_texture(tex, grid), tex, atol=1e-6)


def test_multiple_sources_are_averaged():
    cfg = tiny_config()
    model = BilayerModel(cfg).eval()
    x = dummy_batch(cfg, b=2)
    with torch.no_grad():
        each = model.embedder(x.image, x.landmark_image, x.mask)
        multi = model.embedder(x.image[None], x.landmark_image[None], x.mask[None])
    for e, m in zip(each, multi):
        assert torch.allclose(e.mean(0, keepdim=True), m, atol=1e-5)


def test_baseline_has_no_adaspade_and_no_adaptive_skips():
    base = BilayerModel(tiny_config("baseline"))
    full = BilayerModel(tiny_config("medium"))
    assert not any(isinstance(m, (AdaSPADE, AdaptiveConv1x1)) for m in base.modules())
    assert any(isinstance(m, PixelwiseBias) for m in base.texture_generator.modules())
    assert any(isinstance(m, Conv1x1) for m in base.inference_generator.modules())
    assert not any("features" in n for n, _ in base.texture_generator.named_parameters())
    assert any(isinstance(m, AdaSPADE) for m in full.texture_generator.modules())
    assert any(isinstance(m, AdaptiveConv1x1) for m in full.inference_generator.modules())


def test_updater_zero_steps_is_identity_and_steps_change_texture():
    cfg = tiny_config()
    model = BilayerModel(cfg).eval()
    x = dummy_batch(cfg, b=1)
    with torch.no_grad():
        state = model.initialize(x.image, x.landmark_image)
    same = model.refine(state, x.keypoints, x.image, steps=0)
    assert torch.equal(same.texture, state.texture)
    moved = model.refine(state, x.keypoints, x.image)
    assert (moved.texture - state.texture).abs().max() > 0


def test_updater_is_guided_by_the_source_foreground_only(monkeypatch):
    """L_upd compares rendering and source inside the mask predicted at the source pose: the
    source's pixels where that mask is 0 do not reach the texture, those where it is 1 do."""
    cfg = tiny_config()
    model = BilayerModel(cfg).eval()
    x = dummy_batch(cfg, b=1)
    with torch.no_grad():
        state = model.initialize(x.image, x.landmark_image)
    generator = model.inference_generator.forward

    def left_half_background(*args, **kwargs):
        out = generator(*args, **kwargs)
        logit = torch.full_like(out.mask_logit, 30.0)
        logit[..., : logit.shape[-1] // 2] = -30.0  # mask 0 on the left half, 1 on the right
        return replace(out, mask_logit=logit)

    monkeypatch.setattr(model.inference_generator, "forward", left_half_background)
    half = cfg.image_size // 2
    new_background, new_foreground = x.image.clone(), x.image.clone()
    new_background[..., :half] = torch.rand_like(new_background[..., :half]) * 2 - 1
    new_foreground[..., half:] = torch.rand_like(new_foreground[..., half:]) * 2 - 1
    texture = model.refine(state, x.keypoints, x.image).texture
    assert torch.allclose(model.refine(state, x.keypoints, new_background).texture, texture, atol=1e-6)
    assert (model.refine(state, x.keypoints, new_foreground).texture - texture).abs().max() > 1e-3


def test_standing_statistics_average_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 5, 5) + i for i in range(4)]
    used = standing_statistics(net, batches, net, num_batches=3)
    assert used == 3
    with torch.no_grad():
        means = torch.stack([net[0](b).mean((0, 2, 3)) for b in batches[:3]]).mean(0)
    assert torch.allclose(net[1].running_mean, means, atol=1e-5)
    assert not net.training and not net[1].training
    before = net[1].running_mean.clone()
    net(batches[3])  # frozen: eval mode leaves the statistics alone
    assert torch.equal(before, net[1].running_mean)


def test_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'inf_chanels'"):
        model_config("medium", inf_chanels=8)
    with pytest.raises(ConfigError, match="unknown model size"):
        model_config("huge")
    path = tmp_path / "m.yaml"
    path.write_text("image_size: 128\nada_spade: false\n")
    cfg = load_yaml(ModelConfig, path)
    assert cfg.image_size == 128 and not cfg.ada_spade
    path.write_text("image_size: big\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: ModelConfig\.image_size: expected an integer"):
        load_yaml(ModelConfig, path)



@pytest.mark.parametrize("overrides, match", [
    (dict(tex_projection_size=3), r"tex_projection_size 3: embedding \d \(\d+x3x3 values\) cannot be split into"),
    (dict(inf_channels=3, inf_max_channels=12, inf_projection_size=2), r"inf_projection_size 2: .* into 12 rows"),
    (dict(embedding_size=6), "embedding_size 6 must be image_size 64 divided by a power of two"),
    (dict(embedding_size=64), "embedding_size must be smaller than image_size"),
    (dict(dis_output_size=12), "dis_output_size 12 must be image_size 64 divided by a power of two"),
    (dict(embedding_size=0), "embedding_size must be >= 1"),
    (dict(kp_layers=0), "kp_layers must be >= 1"),
])
def test_config_rejects_shapes_the_networks_cannot_use(overrides, match):
    """Found when the config is made, as one ConfigError line, not as a traceback at model build."""
    with pytest.raises(ConfigError, match=match):
        tiny_config(**overrides)


@pytest.mark.parametrize("size", ["small", "medium", "large", "baseline"])
def test_projection_size_check_is_the_projectors_rule(size):
    """ModelConfig accepts a projection size exactly when the generator's Projector can be built."""
    from bilayer.nets.inference_generator import InferenceGenerator
    from bilayer.nets.texture_generator import TextureGenerator

    # rows of 3, 6 and 12 for embeddings of 8-32 channels: S must be a multiple of 3
    channels = dict(inf_channels=3, inf_max_channels=12, inf_projection_size=6)
    for field, net, extra in (("tex_projection_size", TextureGenerator, {}),
                              ("inf_projection_size", InferenceGenerator, channels)):
        outcomes = set()
        for s in range(1, 7):
            try:
                tiny_config(size, spectral_norm=False, **{**extra, field: s})
                accepted = True
            except ConfigError:
                accepted = False
            cfg = tiny_config(size, spectral_norm=False, **extra)
            object.__setattr__(cfg, field, s)  # past the check, to see what the network says
            try:
                net(cfg)
                built = True
            except ValueError:
                built = False
            assert accepted == built, (field, s)
            outcomes.add(accepted)
        assert outcomes == {True, False}, field  # both cases occur in the range


def test_paper_and_shipped_configs_validate():
    for size in ("small", "medium", "large", "baseline"):
        for image_size in (128, 256, 512):
            model_config(size, image_size=image_size)


def test_embedding_and_score_sizes_are_exact():
    cfg = tiny_config(embedding_size=16, dis_output_size=4)
    model = BilayerModel(cfg).eval()
    x = dummy_batch(cfg, b=1)
    with torch.no_grad():
        assert all(e.shape[-2:] == (16, 16) for e in model.embedder(x.image, x.landmark_image))
        assert Discriminator(cfg)(x.image, x.landmark_image).scores.shape[-2:] == (4, 4)


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_kp_layers_is_the_number_of_linear_layers(layers):
    mlp = BilayerModel(tiny_config(kp_layers=layers)).inference_generator.mlp
    assert sum(isinstance(m, nn.Linear) for m in mlp) == layers


@pytest.mark.slow
def test_bench_macs_json_within_5_percent_of_paper(capsys):
    """The per-frame cost of each size at 256 px lands within +-5 % of the paper's Table 2."""
    assert main(["bench", "macs", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert set(table) == {"small", "medium", "large"}
    for size, paper in PAPER_GMACS.items():
        assert abs(table[size]["gmacs"] / paper - 1) <= 0.05, (size, table[size]["gmacs"], paper)
        assert isinstance(table[size]["params"], int) and table[size]["params"] > 0
    assert table["small"]["params"] < table["medium"]["params"] < table["large"]["params"]
