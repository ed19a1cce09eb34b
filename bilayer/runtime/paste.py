"""Paste-back: the rendered head composited into the source photo's full frame.

The avatar renders in the crop of the source photo (`SourceFace.box`, S x S). `PasteBack` puts
each render back where the crop came from, so the output keeps the photo's size and surroundings:

    once per avatar:  the photo's own person inside the box (the source mask, mapped back to photo
                      pixels and dilated) filled from its surroundings (`cv2.inpaint`, Telea), so
                      that no second head shows where the new pose does not cover the old one; a
                      ramp that fades the render into the untouched photo at the box's sides inside
                      the photo (no seam where the body leaves the box); the feathering kernel
    per frame:        mask feathered (Gaussian, at S x S), render and mask resized to the box's
                      side, blended over the filled photo inside the box (clipped to the photo)

Outside the box the photo is left exactly as it is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
from torch import Tensor

from bilayer.runtime.faces import SourceFace

if TYPE_CHECKING:
    from bilayer.data.preprocess.geometry import CropBox

#: Dilation of the source's foreground before it is filled, as a fraction of the box's side
#: (segmentation edges and loose hair fall just outside the mask).
DILATION = 0.03
#: Standard deviation of the Gaussian feathering the predicted mask, as a fraction of the crop's side.
FEATHER = 0.01
#: Width of the fade from the render to the photo at the box's sides, as a fraction of its side.
BORDER = 0.05
INPAINT_RADIUS = 3  # px; Telea's neighbourhood (larger ones cost more and still streak)


def visible_slices(box: CropBox, width: int, height: int) -> tuple[slice, slice, slice, slice]:
    """(rows, cols) of the box that lie inside a width x height photo: first in photo pixels, then
    the same pixels in box pixels (a box may overhang the photo)."""
    xa, ya = max(box.x0, 0), max(box.y0, 0)
    xb, yb = min(box.x0 + box.side, width), min(box.y0 + box.side, height)
    return slice(ya, yb), slice(xa, xb), slice(ya - box.y0, yb - box.y0), slice(xa - box.x0, xb - box.x0)


def resize_to(image: np.ndarray, side: int) -> np.ndarray:
    """(S, S, ...) -> (side, side, ...), the crop's resampling mirrored (area when shrinking,
    bilinear when enlarging): crop pixel u lands on box pixel (u + 0.5) * side / S - 0.5."""
    interp = cv2.INTER_AREA if side < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (side, side), interpolation=interp)


def foreground_hole(mask: np.ndarray, side: int) -> np.ndarray:
    """(S, S) float32 source mask -> (side, side) uint8 in {0, 1}: above 0.5, dilated by a disk of
    radius DILATION x side (cut at the box: the photo outside it stays as it is)."""
    r = max(1, round(DILATION * side))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate((resize_to(mask.astype(np.float32), side) > 0.5).astype(np.uint8), disk)


def border_ramp(box: CropBox, width: int, height: int) -> np.ndarray:
    """(side, side) float32 in [0, 1]: 0 on the box's sides that lie inside the photo, rising
    linearly to 1 at BORDER x side from them; sides on or beyond the photo's edge do not fade."""
    ramp_width = max(1.0, BORDER * box.side)
    centres = np.arange(box.side, dtype=np.float32) + 0.5  # distance of pixel centres from the near side

    def axis(start: int, size: int) -> np.ndarray:  # (side,) along x (width) or y (height)
        near = np.clip(centres / ramp_width, 0, 1) if start > 0 else np.ones_like(centres)
        far = np.clip(centres[::-1] / ramp_width, 0, 1) if start + box.side < size else np.ones_like(centres)
        return np.minimum(near, far)

    return np.minimum.outer(axis(box.y0, height), axis(box.x0, width))


class PasteBack:
    """Renders of one avatar -> frames of its source photo with the new head in place (see the
    module). Built once per avatar; `background` is the photo with its person filled in."""

    def __init__(self, face: SourceFace):
        photo, box, s = face.photo, face.box, face.image.shape[0]
        height, width = photo.shape[:2]
        self.side = box.side
        self.rows, self.cols, self.box_rows, self.box_cols = visible_slices(box, width, height)
        hole = np.zeros((height, width), np.uint8)
        hole[self.rows, self.cols] = foreground_hole(face.mask, box.side)[self.box_rows, self.box_cols]
        self.background = cv2.inpaint(photo, hole, INPAINT_RADIUS, cv2.INPAINT_TELEA)  # (H, W, 3) uint8
        ramp = border_ramp(box, width, height)[self.box_rows, self.box_cols]
        self.weight = np.ascontiguousarray(ramp)  # (h, w): the render's share, 0 at its sides inside the photo
        filled, original = self.background[self.rows, self.cols], photo[self.rows, self.cols]
        self.region = cv2.blendLinear(filled, original, self.weight, 1 - self.weight)  # (h, w, 3) under the box
        sigma = FEATHER * s
        self.kernel = cv2.getGaussianKernel(2 * int(np.ceil(3 * sigma)) + 1, sigma).astype(np.float32)  # (k, 1)

    def feather(self, mask: np.ndarray) -> np.ndarray:
        """(S, S) float32 -> the same smoothed by the Gaussian kernel (edges replicated: a mask that
        reaches the crop's side keeps its value there)."""
        return cv2.sepFilter2D(mask, -1, self.kernel, self.kernel, borderType=cv2.BORDER_REPLICATE)

    def __call__(self, image: Tensor, mask: Tensor) -> np.ndarray:
        """image (1, 3, S, S) in [-1, 1], mask (1, 1, S, S) in [0, 1] (as `Avatar.render` returns
        them) -> (H, W, 3) uint8 RGB, the photo's size."""
        rgb = np.ascontiguousarray(image[0].detach().float().cpu().numpy().transpose(1, 2, 0)).clip(-1, 1)
        rgb = cv2.convertScaleAbs(rgb, alpha=127.5, beta=127.5)  # (S, S, 3) uint8 (all >= 0: abs is a no-op)
        alpha = self.feather(mask[0, 0].detach().float().cpu().numpy())  # (S, S) float32
        rgb = resize_to(rgb, self.side)[self.box_rows, self.box_cols]  # (h, w, 3)
        alpha = resize_to(alpha, self.side)[self.box_rows, self.box_cols] * self.weight  # (h, w)
        out = self.background.copy()
        out[self.rows, self.cols] = cv2.blendLinear(rgb, self.region, alpha, 1 - alpha)
        return out
