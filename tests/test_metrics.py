"""Image metrics of the evaluation (paper Sec. 4, Table 2) against hand-computed values, skimage,
the `lpips` package itself, and real photos."""
from __future__ import annotations

import copy
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from bilayer.errors import InputError, MetricUnavailable
from bilayer.io.images import to_uint8
from bilayer.metrics.lpips import BACKBONES, LPIPS, lpips_heads_file, load_lpips
from bilayer.metrics.nme import NME, eye_distance, nme
from bilayer.metrics.silhouette import mask_iou
from bilayer.metrics.registry import MetricOptions, build_metric, list_metrics, metric_spec
from bilayer.metrics.ssim import background_windows, ssim, ssim_by_region

needs_lpips = pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                                 reason="the lpips package is not installed (pip install --no-deps lpips==0.1.4)")


def rand_images(b: int = 2, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    return a, noisy


# ----------------------------------------------------------------------------- registry

def test_registry_names_and_directions():
    assert list_metrics() == ["lpips", "ssim", "csim", "nme"]
    assert [metric_spec(n).higher_is_better for n in list_metrics()] == [False, True, True, False]
    with pytest.raises(KeyError, match="unknown metric"):
        build_metric("fid")


# ----------------------------------------------------------------------------- SSIM

def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    a, b = rand_images(size=40)
    ours = ssim(a, b)
    for i in range(len(a)):
        x, y = (((t[i] + 1) / 2).permute(1, 2, 0).numpy() for t in (a, b))
        ref = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1, channel_axis=-1)
        assert abs(float(ours[i]) - ref) < 1e-4


def test_ssim_identical_is_one_and_registered():
    a, b = rand_images()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    assert (ssim(a, b) < 0.99).all()
    scorer = build_metric("ssim")
    assert torch.equal(scorer(a, b, torch.zeros(2, 68, 2)), ssim(a, b))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :8, :8], b[..., :8, :8])


def test_ssim_by_region_splits_the_windows_by_the_target_mask():
    a, b = rand_images(size=40)
    mask = torch.zeros(2, 1, 40, 40)
    mask[..., :, :20] = 1  # person on the left half
    b[..., 20:] = a[..., 20:]  # the right half (background) copied exactly
    background = background_windows(mask)  # (2, 30, 30): windows starting at column >= 20
    assert background.shape == (2, 30, 30)
    assert background[:, :, 20:].all() and not background[:, :, :20].any()
    fg, bg = ssim_by_region(b, a, background)
    assert torch.allclose(bg, torch.ones(2), atol=1e-6)  # identical where copied
    assert (fg < 0.99).all()
    share = background.float().mean(dim=(1, 2))  # 1/3 of the windows
    assert torch.allclose(share * bg + (1 - share) * fg, ssim(b, a), atol=1e-6)  # the split is exact
    fg, bg = ssim_by_region(b, a, background_windows(torch.ones(2, 1, 40, 40)))
    assert torch.isnan(bg).all() and torch.allclose(fg, ssim(b, a))  # no background window: NaN, not 0


# ----------------------------------------------------------------------------- LPIPS

@pytest.fixture(scope="module", params=["vgg", "alex"])
def backbone_file(request, tmp_path_factory):
    """Randomly initialised backbone weights in torchvision's format (features.N + classifier keys)."""
    net = request.param
    torch.manual_seed(0)
    features, _, _ = BACKBONES[net]()
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
            torch.nn.init.normal_(m.bias, std=0.01)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(10, 4)
    path = tmp_path_factory.mktemp("lpips") / f"{net}.pth"
    torch.save(state, path)
    return net, path, features


@needs_lpips
def test_mask_iou_hand_computed():
    a = torch.zeros(3, 1, 8, 8)
    a[:, :, :4] = 1.0  # the top half
    b = torch.zeros(3, 1, 8, 8)
    b[0, :, :4] = 0.9  # same pixels (>= 0.5)
    b[1, :, 4:] = 1.0  # disjoint
    b[2, :, 2:6] = 0.6  # rows 2-5: 16 of the pixels shared, 48 in the union
    assert mask_iou(a, b).tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    assert mask_iou(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.4)).tolist() == [1.0]  # both empty


def test_lpips_identical_zero_different_positive(backbone_file):
    net, path, _ = backbone_file
    metric = load_lpips(net, path)
    a, b = rand_images(size=64)
    assert torch.equal(metric(a, a), torch.zeros(2))
    d = metric(a, b)
    assert d.shape == (2,) and (d > 0).all()


@needs_lpips
def test_lpips_heads_come_from_the_package(backbone_file):
    net, path, _ = backbone_file
    metric = load_lpips(net, path)
    heads = torch.load(lpips_heads_file(net), map_location="cpu", weights_only=True)
    for i, lin in enumerate(metric.lins):
        assert torch.equal(lin.weight, heads[f"lin{i}.model.1.weight"])


@needs_lpips
def test_lpips_equals_the_lpips_package(backbone_file, monkeypatch):
    """The package's own LPIPS module (torchvision stubbed to hand it the same backbone) agrees."""
    net, path, features = backbone_file
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    def build(pretrained: bool = False, **kw) -> types.SimpleNamespace:
        return types.SimpleNamespace(features=copy.deepcopy(features))

    tv.models.vgg16 = tv.models.alexnet = build
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    reference = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    a, b = rand_images(size=64, seed=1)
    with torch.no_grad():
        expected = reference(a, b).flatten()
    assert torch.allclose(load_lpips(net, path)(a, b), expected, rtol=1e-5, atol=1e-7)


def test_lpips_without_backbone_is_unavailable_not_faked():
    with pytest.raises(MetricUnavailable, match="vgg16-397923af.pth"):
        build_metric("lpips")
    with pytest.raises(MetricUnavailable, match="alexnet"):
        build_metric("lpips", MetricOptions(lpips_net="alex"))


@needs_lpips
def test_lpips_bad_backbone_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_lpips("vgg", tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="missing weight 'features.0.bias'"):
        load_lpips("vgg", tmp_path / "partial.pth")
    with pytest.raises(InputError, match="unknown backbone"):
        LPIPS("squeeze")


# ----------------------------------------------------------------------------- NME

def face_keypoints() -> torch.Tensor:
    """(1, 68, 2) keypoints with eye centres exactly 40 px apart: (100, 100) and (140, 100)."""
    g = torch.Generator().manual_seed(0)
    k = torch.rand(1, 68, 2, generator=g) * 100 + 50
    ring = torch.tensor([[-5.0, 0], [-2, -3], [2, -3], [5, 0], [2, 3], [-2, 3]])  # centred on 0
    k[0, 36:42] = ring + torch.tensor([100.0, 100])
    k[0, 42:48] = ring + torch.tensor([140.0, 100])
    return k


def test_nme_hand_computed():
    target = face_keypoints()
    assert torch.allclose(eye_distance(target), torch.tensor([40.0]))
    assert torch.equal(nme(target, target), torch.zeros(1))
    # every point off by (3, 4): error 5 px -> 10 * 5 / 40
    assert torch.allclose(nme(target + torch.tensor([3.0, 4.0]), target), torch.tensor([1.25]))
    # half the points off by 8 px along x, half exact: mean error 4 px -> 10 * 4 / 40
    pred = target.clone()
    pred[0, ::2, 0] += 8
    assert torch.allclose(nme(pred, target), torch.tensor([1.0]))


def test_nme_metric_with_a_stub_detector():
    """Detections are read from the images: 'pred' images (mean > 0) have the face shifted by
    (6, 8) px, a black image has no face. Target keypoints are re-detected, not read from the data."""
    target_px = face_keypoints()[0].numpy()

    def detector(image: np.ndarray):
        if image.max() == 0:
            return None
        return target_px + (6.0, 8.0) if image.mean() > 128 else target_px

    size = 256
    pred = torch.stack([torch.full((3, size, size), 0.5), torch.full((3, size, size), -1.0)])
    target = torch.full((2, 3, size, size), -0.5)
    wrong_annotation = torch.zeros(2, 68, 2)  # ignored: the target's face is found
    scores = NME(detector)(pred, target, wrong_annotation)
    assert torch.allclose(scores[0], torch.tensor(2.5))  # 10 * 10 / 40
    assert torch.isnan(scores[1])


def test_nme_falls_back_to_annotation_without_a_target_face():
    from bilayer.data.landmarks import normalize_keypoints

    target_px = face_keypoints()[0].numpy()
    detector = lambda image: target_px + (3.0, 4.0) if image.mean() > 0 else None  # noqa: E731
    pred, target = torch.ones(1, 3, 64, 64), -torch.ones(1, 3, 64, 64)
    annotation = torch.from_numpy(normalize_keypoints(target_px, 64))[None]
    assert torch.allclose(NME(detector)(pred, target, annotation), torch.tensor([1.25]), atol=1e-5)


@pytest.fixture(scope="module")
def faces(annotator):
    """Real 256x256 face crops of the two sample photos: {name: (image (1,3,S,S), keypoints (1,68,2))}."""
    from bilayer.data.samples import load_photo

    out = {}
    for name in ("astronaut", "grace_hopper"):
        annotator.reset()
        a = annotator(load_photo(name))
        image = torch.from_numpy(a.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        out[name] = (image, torch.from_numpy(a.keypoints)[None])
    return out


def test_nme_real_detector_on_real_faces(faces):
    metric = build_metric("nme")
    image, keypoints = faces["astronaut"]
    assert float(metric(image, image, keypoints)[0]) == 0.0
    # the synthesized face 6 px right and 8 px down: every keypoint ~10 px off
    shifted = torch.roll(image, shifts=(8, 6), dims=(2, 3))
    found = metric.detector(to_uint8(image)[0])
    expected = 10 * 10 / float(eye_distance(torch.from_numpy(found)[None]))
    assert float(metric(shifted, image, keypoints)[0]) == pytest.approx(expected, rel=0.1)
    assert torch.isnan(metric(-torch.ones_like(image), image, keypoints)[0])


# ----------------------------------------------------------------------------- CSIM

def test_csim_identical_one_and_identity_sensitive(faces):
    metric = build_metric("csim")
    a, ka = faces["astronaut"]
    g, _ = faces["grace_hopper"]
    same = metric(a, a, ka)
    assert same.shape == (1,) and float(same[0]) == pytest.approx(1.0, abs=1e-5)
    other = float(metric(g, a, ka)[0])  # another person's crop, aligned by the target's keypoints
    noisy = float(metric((a + 0.1 * torch.randn_like(a)).clamp(-1, 1), a, ka)[0])
    assert other < noisy < 1.0
