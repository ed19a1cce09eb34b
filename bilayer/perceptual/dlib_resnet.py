"""dlib's 128-D face-recognition ResNet, ported to PyTorch: the face-perceptual network (Sec. 3.2).

The paper's face term (Eq. 5) uses VGGFace features; no VGGFace weights can be had offline, so the
face network shipped with bilayer is dlib's `dlib_face_recognition_resnet_model_v1.dat`
(metric learning, CC0, from the `face-recognition-models` package), converted once by
`scripts/convert_dlib_resnet.py` into `bilayer/assets/dlib_face_resnet_v1.pt`. Its embedding is also
the identity metric CSIM (cosine of 128-D embeddings of synthesized vs target faces).

Layout (dlib's `anet_type`): conv7x7/2 32 -> affine -> relu -> maxpool3x3/2, then 14 residual blocks
(3 x 32, 4 x 64, 3 x 128, 3 x 256, 1 x 256; the first block of the last four levels downsamples),
global average pooling and a 256 -> 128 linear map without bias. `affine` layers are batch norm
folded into a per-channel scale and shift. Input: a 150x150 RGB face chip aligned by
`face_chip` exactly as dlib's `get_face_chip_details(shape, 150, 0.25)` + `extract_image_chip`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bilayer.assets import DLIB_FACE_RESNET
from bilayer.errors import InputError
from bilayer.perceptual.weights import load_into, read_state_dict

CHIP_SIZE = 150
CHIP_PADDING = 0.25

#: (channels, blocks, first block downsamples) per level, input to output (dlib's alevel4 ... alevel0).
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))

# dlib's mean face (interpolation.h, get_face_chip_details): 68-point landmarks 17..67 in a unit box.
_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)
_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)
# dlib fits the chip to landmarks 27..54 and 60..64 (no jaw, eyebrows or lower lip).
_FIT_68 = [i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)]
_TEMPLATE_68 = [(_MEAN_FACE_X[i - 17], _MEAN_FACE_Y[i - 17]) for i in _FIT_68]
# dlib's 5-point template (outer/inner eye corners of each eye, nose base), same unit box.
_TEMPLATE_5 = [
    (0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
]
_TEMPLATES = {68: (_FIT_68, _TEMPLATE_68), 5: (list(range(5)), _TEMPLATE_5)}


@dataclass
class FaceDescriptor:
    embedding: Tensor  # (B, 128) dlib face descriptor (not normalized; compare by cosine or L2)
    features: list[Tensor]  # 5 maps: (B, 32, 72, 72), (B, 32, 35, 35), (B, 64, 17, 17), (B, 128, 8, 8), (B, 256, 4, 4)


class Affine(nn.Module):
    """dlib's `affine` layer: batch norm folded into a per-channel scale and shift."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def add_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's `add_prev`: a sum of maps of different channel count / size, zero-padded at the end."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(x: Tensor) -> Tensor:
        return F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2], 0, c - x.shape[1]))

    return pad(a) + pad(b)


class ResBlock(nn.Module):
    """relu(block(x) + skip(x)); block = affine-conv3x3-relu-affine-conv3x3 (BN folded, no projection).

    A downsampling block convolves with stride 2 and no padding (dlib's default for strided convs)
    and skips through 2x2 average pooling; channel or size mismatches are zero-padded (`add_padded`).
    """

    def __init__(self, cin: int, cout: int, *, down: bool = False):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.affine2 = Affine(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2) if self.down else x
        return F.relu(add_padded(y, skip))


class DlibFaceResNet(nn.Module):
    """dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`), differentiable."""

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor([122.782, 117.001, 104.298]))  # RGB, 0..255
        self.conv = nn.Conv2d(3, 32, 7, stride=2)
        self.affine = Affine(32)
        blocks, cin = [], 32
        for cout, n, down in LEVELS:
            level = [ResBlock(cin, cout, down=down)] + [ResBlock(cout, cout) for _ in range(n - 1)]
            blocks.append(nn.Sequential(*level))
            cin = cout
        self.levels = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, 128, bias=False)

    def forward(self, image: Tensor, keypoints: Tensor | None = None) -> FaceDescriptor:
        """image: (B, 3, H, W) RGB in [-1, 1]; keypoints: (B, 68|5, 2) in [-1, 1] (x, y) -> descriptor.

        With keypoints the face is first aligned by `face_chip`; without, `image` must already be
        the 150x150 chip.
        """
        chip = image if keypoints is None else face_chip(image, keypoints)
        if chip.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
            raise InputError(f"face chip: expected {CHIP_SIZE}x{CHIP_SIZE}, got {tuple(chip.shape)}")
        x = ((chip + 1) * 127.5 - self.input_mean[:, None, None]) / 256  # dlib's input_rgb_image
        x = F.relu(self.affine(self.conv(x)))  # (B, 32, 72, 72)
        features = [x]
        x = F.max_pool2d(x, 3, stride=2)  # (B, 32, 35, 35)
        for level in self.levels:
            x = level(x)  # 35, 17, 8, 4, 2 px (a 3x3 block output is zero-padded to 4x4, as in dlib)
            features.append(x)
        embedding = self.fc(x.mean(dim=(2, 3)))  # (B, 128)
        return FaceDescriptor(embedding=embedding, features=features[:5])  # the 2x2 map is no tap


def load_dlib_face_resnet(path: str | Path = DLIB_FACE_RESNET) -> DlibFaceResNet:
    """The converted dlib network (frozen, eval mode) from a state-dict file."""
    return load_into(DlibFaceResNet(), read_state_dict(path), path)


def chip_to_image_affine(keypoints_px: Tensor, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> Tensor:
    """keypoints_px: (B, 68|5, 2) image pixels -> (B, 2, 3) map from chip pixels to image pixels.

    Reproduces dlib's `get_face_chip_details` (least-squares similarity from the padded mean face
    to the landmarks) and the corner mapping of `extract_image_chips` (the chip spans
    `size * scale - 1` image pixels around the transformed chip centre).
    """
    if keypoints_px.dim() != 3 or keypoints_px.shape[1] not in _TEMPLATES or keypoints_px.shape[2] != 2:
        raise InputError(f"face keypoints: expected (B, 68, 2) or (B, 5, 2), got {tuple(keypoints_px.shape)}")
    index, template = _TEMPLATES[keypoints_px.shape[1]]
    src = torch.tensor(template, dtype=keypoints_px.dtype, device=keypoints_px.device)
    src = (src + padding) * size / (2 * padding + 1)  # (P, 2) chip pixels
    dst = keypoints_px[:, index]  # (B, P, 2)
    src_c, dst_c = src - src.mean(0), dst - dst.mean(1, keepdim=True)
    var = (src_c ** 2).sum()
    a = (src_c[:, 0] * dst_c[..., 0] + src_c[:, 1] * dst_c[..., 1]).sum(-1) / var  # (B,) scale * cos
    b = (src_c[:, 0] * dst_c[..., 1] - src_c[:, 1] * dst_c[..., 0]).sum(-1) / var  # (B,) scale * sin
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    shift = dst.mean(1) - (rot @ src.mean(0)[:, None])[..., 0]  # (B, 2)
    centre = (rot @ src.new_tensor([size / 2, size / 2])[:, None])[..., 0] + shift  # (B, 2)
    scale = torch.sqrt(a ** 2 + b ** 2)  # (B,)
    step = rot * ((size * scale - 1) / (size - 1) / scale)[:, None, None]  # image pixels per chip pixel
    offset = centre - (step @ centre.new_tensor([(size - 1) / 2] * 2)[:, None])[..., 0]
    return torch.cat([step, offset[..., None]], -1)  # (B, 2, 3)


def face_chip(image: Tensor, keypoints: Tensor, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> Tensor:
    """Differentiable dlib face alignment: image (B, 3, H, W), keypoints (B, 68|5, 2) in [-1, 1]
    -> chip (B, 3, size, size), as dlib's `get_face_chip(img, shape, size, padding)`.

    Keypoints use the `grid_sample(align_corners=False)` convention of the rest of bilayer:
    pixel x = ((x_n + 1) * W - 1) / 2.
    """
    b, _, h, w = image.shape
    wh = image.new_tensor([w, h])
    affine = chip_to_image_affine(((keypoints + 1) * wh - 1) / 2, size, padding)  # (B, 2, 3)
    return torch.cat([extract_chip(image[i:i + 1], affine[i], size) for i in range(b)])


def extract_chip(image: Tensor, affine: Tensor, size: int) -> Tensor:
    """dlib's `extract_image_chip`: image (1, C, H, W), affine (2, 3) chip px -> image px -> (1, C, size, size).

    Bilinear sampling (zeros outside). When the chip is over 2x smaller than its image region, dlib
    samples a level of its `pyramid_down<2>` instead, and so does this (`_pyramid_level`).
    """
    levels, step = 0, float(affine[:, :2].det().abs().sqrt())  # image px per chip px
    while step > 2 ** (levels + 1):
        levels += 1
    if levels:
        image, affine = _pyramid_level(image, affine, size, levels)
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=image.dtype, device=image.device),
                            torch.arange(size, dtype=image.dtype, device=image.device), indexing="ij")
    chip_px = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (S, S, 3)
    img_px = chip_px @ affine.T  # (S, S, 2)
    grid = (2 * img_px + 1) / image.new_tensor([w, h]) - 1
    return F.grid_sample(image, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)


def _pyramid_level(image: Tensor, affine: Tensor, size: int, levels: int) -> tuple[Tensor, Tensor]:
    """The pyramid level dlib's `extract_image_chips` samples, and the chip -> level affine.

    dlib crops the chip's bounding box grown by 2^(levels+2) - 2 px (rounded, clipped to the image),
    downsamples it `levels` times with a 5x5 binomial filter (every other pixel, no padding) and maps
    points down with its `point_down(p) = p / 2 - (1.25, 0.75)`.
    """
    h, w = image.shape[-2:]
    centre = affine @ affine.new_tensor([(size - 1) / 2, (size - 1) / 2, 1.0])  # (2,)
    half = (size - 1) / 2 * (affine[0, 0].abs() + affine[1, 0].abs()) + 2 ** (levels + 2) - 2
    lo = torch.clamp(centre - half, min=0).tolist()
    hi = torch.minimum(centre + half, affine.new_tensor([w - 1, h - 1])).tolist()
    (x0, y0), (x1, y1) = ([math.floor(v + 0.5) for v in p] for p in (lo, hi))
    image = image[..., y0:y1 + 1, x0:x1 + 1]
    step, offset = affine[:, :2], affine[:, 2] - affine.new_tensor([x0, y0])
    kernel = affine.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 256).expand(image.shape[1], 1, 5, 5)
    for _ in range(levels):
        image = F.conv2d(image, kernel, stride=2, groups=image.shape[1])  # (n - 3) // 2 px per side
        step, offset = step / 2, offset / 2 - affine.new_tensor([1.25, 0.75])
    return image, torch.cat([step, offset[:, None]], 1)
