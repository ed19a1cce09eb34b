"""Paste-back (`bilayer.runtime.paste`, `animate --paste-back`): the render composited into the
source photo's full frame over the photo with its own person filled in.

Random models render garbage, so the geometry is tested with synthetic renders and photos; the
filling on a real photo (its face must be gone) and the command end to end on real media.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from bilayer.cli.main import main
from bilayer.data.preprocess.geometry import CropBox
from bilayer.runtime.faces import SourceFace
from bilayer.runtime.paste import BORDER, PasteBack

QUADRANTS = np.array([[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 0)]], np.uint8)  # (2, 2, 3)


def synthetic_face(photo: np.ndarray, box: CropBox, mask: np.ndarray) -> SourceFace:
    """A SourceFace of `photo` cut at `box`, with the (S, S) source `mask` given."""
    s = mask.shape[0]
    return SourceFace(box.crop(photo, s), np.zeros((68, 2), np.float32), mask.astype(np.float32), photo, box)


def render(rgb: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S, 3) uint8 and (S, S) in [0, 1] -> as Avatar.render: (1, 3, S, S) in [-1, 1], (1, 1, S, S)."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    return image, torch.from_numpy(mask.astype(np.float32))[None, None]


def quadrants(s: int) -> np.ndarray:
    """(S, S, 3) uint8: red | green over blue | yellow."""
    return QUADRANTS.repeat(s // 2, axis=0).repeat(s // 2, axis=1)


def disc(s: int, cx: float, cy: float, r: float) -> np.ndarray:
    """(s, s) float32: 1 inside the circle, 0 outside."""
    ys, xs = np.mgrid[0:s, 0:s]
    return ((xs - cx) ** 2 + (ys - cy) ** 2 <= r**2).astype(np.float32)


@pytest.mark.parametrize("height, width", [(120, 160), (121, 161)])
def test_photo_outside_the_box_render_inside(height, width):
    """Outside the box: the photo, bit for bit; inside it (off the fading sides), where the mask is
    1: the render resized to the box's side, in place (quadrants land in the right corners)."""
    photo = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    box, s = CropBox(40, 20, 96), 64
    paste = PasteBack(synthetic_face(photo, box, np.zeros((s, s))))
    out = paste(*render(quadrants(s), np.ones((s, s))))
    assert out.shape == photo.shape and out.dtype == np.uint8
    outside = np.ones((height, width), bool)
    outside[20:116, 40:136] = False
    np.testing.assert_array_equal(out[outside], photo[outside])
    inset, half = math.ceil(BORDER * box.side) + 1, box.side // 2
    for i, j in np.ndindex(2, 2):
        y0, x0 = box.y0 + i * half, box.x0 + j * half
        block = out[y0 + inset: y0 + half - inset, x0 + inset: x0 + half - inset].astype(int)
        assert np.abs(block - QUADRANTS[i, j]).max() <= 1, (i, j)


def test_feathered_mask_is_a_smooth_ramp():
    """A hard mask edge (left half of the crop) becomes a monotonic ramp of several pixels
    centred where the edge maps to in the photo, not a step."""
    photo = np.zeros((128, 128, 3), np.uint8)
    box, s = CropBox(16, 16, 96), 64
    mask = np.zeros((s, s))
    mask[:, : s // 2] = 1
    out = PasteBack(synthetic_face(photo, box, np.zeros((s, s))))(*render(np.full((s, s, 3), 255, np.uint8), mask))
    inset = math.ceil(BORDER * box.side) + 1
    row = out[64, box.x0 + inset: box.x0 + box.side - inset, 0].astype(int)  # across the edge
    assert row[0] == 255 and row[-1] == 0
    assert (np.diff(row) <= 0).all()  # monotonic
    ramp = np.flatnonzero((row > 0) & (row < 255))
    assert len(ramp) >= 4 and np.abs(np.diff(row)).max() < 128  # no jump of half the range
    centre = box.x0 + inset + np.interp(127.5, row[::-1], np.arange(len(row))[::-1])  # photo x of 50 %
    assert abs(centre - (box.x0 + box.side / 2 - 0.5)) <= 1


def test_box_overhanging_the_photo_is_clipped_and_fades_only_inside_it():
    """A box over the photo's top and (by 2 px) left edges: the visible part lands in place; its
    sides beyond the photo do not fade (the render reaches the photo's edge), its sides inside
    fade into the photo, which is left as it is outside the box."""
    photo = np.random.default_rng(1).integers(0, 256, (80, 100, 3), np.uint8)
    box, s = CropBox(-2, -30, 80), 64  # visible: rows 0..49, cols 0..77
    out = PasteBack(synthetic_face(photo, box, np.zeros((s, s))))(*render(quadrants(s), np.ones((s, s))))
    assert out.shape == photo.shape
    np.testing.assert_array_equal(out[50:], photo[50:])
    np.testing.assert_array_equal(out[:, 78:], photo[:, 78:])
    assert np.abs(out[0, 0].astype(int) - QUADRANTS[0, 0]).max() <= 1  # box (30, 2), at the photo's corner
    assert np.abs(out[45, 70].astype(int) - QUADRANTS[1, 1]).max() <= 1  # box (75, 72)
    green, under = out[5, 58:78, 1].astype(int), photo[5, 58:78, 1].astype(int)  # box (35, 60..79): green
    weight = (green - under) / np.maximum(255 - under, 1)  # the render's share, up to the box's right side
    assert weight[-1] < 0.5 and weight[0] > 0.99


def test_filling_leaves_no_trace_of_the_old_head():
    """A textured head on a plain background, its source mask a little tight: with a transparent
    render, the whole frame is the background colour (the dilation covers the mask's edge)."""
    colour = np.array([40, 120, 200], np.uint8)
    photo = np.tile(colour, (160, 160, 1))
    head = disc(160, 80, 70, 30).astype(bool)
    photo[head] = np.random.default_rng(2).integers(0, 256, (int(head.sum()), 3), np.uint8)
    box, s = CropBox(20, 10, 120), 64
    scale = s / box.side  # crop pixel u = (x - x0 + 0.5) * scale - 0.5
    mask = disc(s, (80 - 20 + 0.5) * scale - 0.5, (70 - 10 + 0.5) * scale - 0.5, 28 * scale)
    paste = PasteBack(synthetic_face(photo, box, mask))
    out = paste(*render(np.zeros((s, s, 3), np.uint8), np.zeros((s, s))))
    error = np.abs(out.astype(int) - colour)
    assert error.max() <= 8 and error.mean() < 0.5  # Telea's rounding, against a random head
    assert np.abs(photo[head].astype(int) - colour).mean() > 50  # there was a head to remove


@pytest.fixture(scope="module")
def astronaut(media_dir):
    """(photo, SourceFace at 256) of the astronaut photo."""
    from bilayer.runtime.faces import crop_source, read_photo

    path = media_dir / "bob" / "portrait.png"
    return read_photo(path), crop_source(path, 256)


def test_source_face_carries_the_photo_and_its_crop_box(astronaut):
    photo, face = astronaut
    np.testing.assert_array_equal(face.photo, photo)
    np.testing.assert_array_equal(face.box.crop(face.photo, 256), face.image)


def test_real_photo_old_face_is_gone_where_the_render_is_transparent(astronaut, annotator):
    """Where the new render is transparent the detector finds no face and the face's texture
    (eyes, mouth) is gone; pasting the source's own crop with its own mask gives the photo back."""
    photo, face = astronaut
    paste = PasteBack(face)
    empty = paste(torch.zeros(1, 3, 256, 256), torch.zeros(1, 1, 256, 256))
    annotator.reset()
    assert annotator(photo) is not None
    annotator.reset()
    assert annotator(empty) is None
    kp = (face.box.x0, face.box.y0) + (face.keypoints + 1) / 2 * face.box.side  # (68, 2) photo pixels, roughly
    (x0, y0), (x1, y1) = kp.min(0).astype(int), kp.max(0).astype(int)

    def texture(rgb):  # variance of the Laplacian in the face box
        return cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[y0:y1, x0:x1], cv2.CV_32F).var()

    assert np.abs(empty[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).mean() > 30
    assert texture(empty) < texture(photo) / 4
    own = paste(*render(face.image, face.mask))
    assert np.abs(own[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).mean() < 6


def probe(path) -> tuple[int, tuple[int, int], np.ndarray]:
    """(frames, (width, height), first frame (H, W, 3) uint8) of a video."""
    import av

    with av.open(str(path)) as c:
        frames = c.decode(video=0)
        first = next(frames).to_ndarray(format="rgb24")
        return 1 + sum(1 for _ in frames), (c.streams.video[0].width, c.streams.video[0].height), first


@pytest.mark.parametrize("crop, extra, size", [
    ((slice(None), slice(None)), [], (512, 512)),  # the photo's size
    ((slice(0, 501), slice(3, 510)), [], (506, 500)),  # 507 x 501: odd sides lose their last pixel
    ((slice(None), slice(None)), ["--side-by-side"], (3 * 64, 64)),  # source | driver | pasted, at the crop
])
def test_animate_paste_back_writes_frames_of_the_photo_size(crop, extra, size, media_dir, sample_video,
                                                            tiny_checkpoint, tmp_path, capsys):
    from bilayer.io.images import write_png
    from bilayer.runtime.faces import read_photo

    photo = read_photo(media_dir / "bob" / "portrait.png")[crop]
    source = write_png(tmp_path / "photo.png", photo)
    out = tmp_path / "pasted.mp4"
    code = main(["animate", "--source", str(source), "--driver", str(sample_video), "--out", str(out),
                 "--checkpoint", str(tiny_checkpoint), "--max-frames", "3", "--paste-back", *extra, "--quiet"])
    assert code == 0, capsys.readouterr().err
    frames, shape, first = probe(out)
    assert (frames, shape) == (3, size)
    if not extra:  # far from the crop box (the right edge of the astronaut photo) the photo is kept
        assert np.abs(first[:, -60:].astype(int) - photo[: size[1], size[0] - 60: size[0]]).mean() < 4


@pytest.mark.parametrize("background", ["white", "none"])
def test_paste_back_refuses_a_background_up_front(background, media_dir, sample_video, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(["animate", "--source", str(media_dir / "bob" / "portrait.png"), "--driver", str(sample_video),
                 "--out", str(out), "--checkpoint", str(tmp_path / "missing.pt"), "--paste-back",
                 "--background", background, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"background '{background}' does not apply with paste_back" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()  # before the checkpoint is read


def test_demo_paste_back_writes_the_photo_frame_and_crop_panels(tiny_checkpoint, tmp_path, capsys):
    """The demo's photo (Grace Hopper, 512 x 600) in its full frame; side by side at the crop."""
    assert main(["demo", "--out", str(tmp_path), "--checkpoint", str(tiny_checkpoint), "--paste-back", "--quiet"]) == 0
    assert probe(tmp_path / "output.mp4")[:2] == (250, (512, 600))
    assert probe(tmp_path / "side_by_side.mp4")[:2] == (250, (3 * 64, 64))
