"""The training losses (Sec. 3.2-3.4, App. A.1): each term against its equation, and the masking and
stop-gradient rules of the loss object."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilayer.data.frame import Frame
from bilayer.losses import (
    LossWeights,
    Objective,
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    mask_bce,
    perceptual_l1,
    pixel_l1,
    relativistic_scores,
    warp_regularizer,
    warp_weight,
)
from bilayer.nets import BilayerModel, DiscriminatorOutput, apply_mask
from tests.nets_helpers import dummy_batch, tiny_config


def test_relativistic_scores_subtract_the_batch_mean_of_the_other_set_per_patch():
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    s_real, s_fake = relativistic_scores(real, fake)
    for i in range(3):  # Eqs. 10-11 written out
        assert torch.allclose(s_real[i], real[i] - sum(fake[n] for n in range(3)) / 3)
        assert torch.allclose(s_fake[i], fake[i] - sum(real[n] for n in range(3)) / 3)


def test_hinge_losses_follow_eqs_12_and_13():
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    s, s_hat = relativistic_scores(real, fake)
    d = (torch.clamp(1 - s, min=0) + torch.clamp(1 + s_hat, min=0)).mean()
    g = (torch.clamp(1 + s, min=0) + torch.clamp(1 - s_hat, min=0)).mean()
    assert torch.allclose(discriminator_hinge(real, fake), d)
    assert torch.allclose(generator_hinge(real, fake), g)
    # A discriminator that separates the sets by a margin > 2 has zero loss; its generator does not.
    assert discriminator_hinge(torch.full((2, 1, 8, 8), 2.0), torch.full((2, 1, 8, 8), -2.0)) == 0
    assert generator_hinge(torch.full((2, 1, 8, 8), 2.0), torch.full((2, 1, 8, 8), -2.0)) == 10


def test_feature_matching_is_the_mean_l1_over_blocks_with_real_detached():
    real = [torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)]
    fake = [torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)]
    loss = feature_matching(real, fake)
    expected = ((fake[0] - real[0]).abs().mean() + (fake[1] - real[1]).abs().mean()) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(r.grad is None for r in real) and all(f.grad is not None for f in fake)


def test_pixel_warp_and_mask_terms():
    lf, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(pixel_l1(lf, target), (lf - target).abs().mean())  # Eq. 2
    delta = torch.randn(2, 4, 4, 2)
    assert torch.allclose(warp_regularizer(delta), delta.abs().mean())  # Eq. 9
    logit, mask = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert torch.allclose(mask_bce(logit, mask), F.binary_cross_entropy(torch.sigmoid(logit), mask), atol=1e-6)


def test_apply_mask_blends_into_a_black_background():
    image, mask = torch.rand(1, 3, 2, 2) * 2 - 1, torch.tensor([[[[1.0, 0.0], [0.5, 0.25]]]])
    out = apply_mask(image, mask)
    assert torch.equal(out[..., 0, 0], image[..., 0, 0])
    assert torch.equal(out[..., 0, 1], torch.full((1, 3), -1.0))
    assert torch.allclose(out[..., 1, 0], 0.5 * image[..., 1, 0] - 0.5)


def test_warp_weight_is_multiplied_by_0_9_every_50_iterations():
    w = LossWeights()
    assert [warp_weight(w, i) for i in (0, 49)] == [10.0, 10.0]
    assert warp_weight(w, 50) == pytest.approx(9.0)
    assert warp_weight(w, 99) == pytest.approx(9.0)
    assert warp_weight(w, 100) == pytest.approx(8.1)
    assert warp_weight(w, 5000) == pytest.approx(10 * 0.9**100)


def test_loss_weights_default_to_the_paper_and_reject_bad_values():
    w = LossWeights()
    assert (w.adversarial, w.feature_matching, w.pixel, w.imagenet, w.face, w.warp, w.mask) == (0.5, 10, 10, 10, 0.01, 10, 10)
    assert (w.warp_decay, w.warp_decay_every) == (0.9, 50)
    with pytest.raises(ValueError, match="pixel"):
        LossWeights(pixel=-1.0)
    with pytest.raises(ValueError, match="warp_decay"):
        LossWeights(warp_decay=1.5)


class RecordingDiscriminator(nn.Module):
    """A PatchGAN stand-in that records its inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 1, 3, padding=1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, image, landmarks):
        self.inputs.append(image.detach().clone())
        h = self.conv(torch.cat([image, landmarks], 1))
        return DiscriminatorOutput(F.avg_pool2d(h, 8), [h])


class MeanFeatures(nn.Module):
    """A perceptual-net stand-in: two pooled maps of the image."""

    def forward(self, image, keypoints):
        return [F.avg_pool2d(image, 2), F.avg_pool2d(image, 4)]


@pytest.fixture
def rendered():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = BilayerModel(cfg)
    b = dummy_batch(cfg, 2)
    out = model.render(b.keypoints, model.initialize(b.image, b.landmark_image, b.mask))
    target = Frame(b.image.flip(0), b.landmark_image, b.keypoints, (b.mask > 0.5).float())
    return out, target


def test_discriminator_sees_real_and_fake_masked_by_the_detached_predicted_mask(rendered):
    out, target = rendered
    d = RecordingDiscriminator()
    losses = Objective(LossWeights(), face=MeanFeatures()).generator(out, target, d, warp=10.0)
    (inputs,) = d.inputs  # real and fake in ONE call (App. A.2)
    m = out.mask.detach()
    assert torch.allclose(inputs[:2], target.image * m - (1 - m))
    assert torch.allclose(inputs[2:], out.image.detach() * m - (1 - m))
    assert torch.equal(losses.real, inputs[:2]) and torch.allclose(losses.fake, inputs[2:])
    d_terms = Objective(LossWeights()).discriminator(d, losses.real, losses.fake, target.landmark_image)
    assert torch.equal(d.inputs[1], inputs) and set(d_terms) == {"adversarial"}


def test_generator_terms_are_named_weighted_and_skipped_at_zero_weight(rendered):
    out, target = rendered
    w = LossWeights()
    terms = Objective(w, face=MeanFeatures()).generator(out, target, RecordingDiscriminator(), warp=9.0).terms
    assert set(terms) == {"adversarial", "feature_matching", "pixel", "face", "warp", "mask"}
    assert torch.allclose(terms["warp"], 9.0 * out.warp_delta.abs().mean())
    m = out.mask.detach()
    assert torch.allclose(terms["pixel"], 10 * (apply_mask(out.lf, m) - apply_mask(target.image, m)).abs().mean())
    assert torch.allclose(terms["mask"], 10 * mask_bce(out.mask_logit, target.mask))
    off = LossWeights(adversarial=0.0, feature_matching=0.0, face=0.0, mask=0.0)
    d = RecordingDiscriminator()
    terms = Objective(off, face=MeanFeatures()).generator(out, target, d, warp=0.0).terms
    assert set(terms) == {"pixel"} and not d.inputs  # D is not even run


def test_stop_gradients_lf_gets_no_perceptual_signal_and_the_mask_only_bce(rendered):
    out, target = rendered
    lf = out.lf.detach().requires_grad_(True)
    mask_logit = out.mask_logit.detach().requires_grad_(True)
    hf = out.hf.detach().requires_grad_(True)
    image = lf + hf
    out = type(out)(image, lf, hf, mask_logit, out.grid, out.warp_delta)
    objective = Objective(LossWeights(), face=MeanFeatures())
    terms = objective.generator(out, target, RecordingDiscriminator(), warp=0.0).terms
    # Perceptual (Eq. 3: SG(LF) + HF): gradient to HF only.
    g_lf, g_hf, g_mask = torch.autograd.grad(terms["face"], [lf, hf, mask_logit], allow_unused=True)
    assert g_lf is None and g_mask is None and g_hf.abs().sum() > 0
    # Adversarial and feature matching reach the image but not the mask (SG(m), Sec. 3.4).
    adv = terms["adversarial"] + terms["feature_matching"]
    g_lf, g_mask = torch.autograd.grad(adv, [lf, mask_logit], allow_unused=True)
    assert g_mask is None and g_lf.abs().sum() > 0
    (g_mask,) = torch.autograd.grad(terms["mask"], [mask_logit])
    assert g_mask.abs().sum() > 0


def test_perceptual_l1_is_the_mean_over_layers_of_mean_abs_differences():
    fake, real = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 8, 8)
    loss = perceptual_l1(MeanFeatures(), fake, real, torch.zeros(2, 68, 2))
    f, r = MeanFeatures()(fake, None), MeanFeatures()(real, None)
    assert torch.allclose(loss, ((f[0] - r[0]).abs().mean() + (f[1] - r[1]).abs().mean()) / 2)
