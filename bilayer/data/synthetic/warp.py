"""Piecewise-affine image warp with depth order, as dense backward maps and bilinear remaps.

Each output pixel takes the affine map of the triangle that covers it (the nearest one is drawn
last, so a turning nose hides the cheek behind it). Neighbouring triangles share vertices, so the
map is continuous across their common edges and one `cv2.remap` warps without seams. Where a turn
folds the face over what lies behind it, the map jumps: there each pixel averages the maps of the
triangles covering k x k sub-pixel points (all evaluated at the pixel centre, so the rest of the
image stays exactly as sharp as with one sample).
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

SUBPIXEL_BITS = 4  # fixed-point precision of the triangle rasterization
SMOOTH_SHRINK = 4  # the displacement field is smoothed at this fraction of the resolution (it is smooth)


def triangle_affines(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps taking each destination triangle onto its source triangle.

    src, dst: (N, 2) vertices; triangles: (M, 3) -> (M, 2, 3) float32 maps and (M,) bool, False
    where the destination triangle is degenerate (e.g. a fully closed eyelid).
    """
    s, d = src[triangles].astype(np.float64), dst[triangles].astype(np.float64)  # (M, 3, 2)
    ds = np.stack([d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]], 2)  # (M, 2, 2) edge vectors as columns
    ss = np.stack([s[:, 1] - s[:, 0], s[:, 2] - s[:, 0]], 2)
    det = ds[:, 0, 0] * ds[:, 1, 1] - ds[:, 0, 1] * ds[:, 1, 0]  # twice the signed area, px^2
    valid = np.abs(det) > 1e-3
    det = np.where(valid, det, 1.0)
    adjugate = np.stack([np.stack([ds[:, 1, 1], -ds[:, 0, 1]], 1), np.stack([-ds[:, 1, 0], ds[:, 0, 0]], 1)], 1)
    linear = ss @ (adjugate / det[:, None, None])  # (M, 2, 2) source edges @ inverse of destination edges
    shift = s[:, 0] - (linear @ d[:, 0, :, None])[..., 0]  # (M, 2)
    return np.concatenate([linear, shift[..., None]], 2).astype(np.float32), valid


@functools.cache
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _smoothed(field: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) float32 field blurred with `sigma` px, computed at 1/SMOOTH_SHRINK of the resolution."""
    h, w = field.shape
    small = cv2.resize(field, (w // SMOOTH_SHRINK, h // SMOOTH_SHRINK), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / SMOOTH_SHRINK, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def backward_maps(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray, order: np.ndarray, shape: tuple[int, int],
                  smooth: float = 0.0, sharp: np.ndarray | None = None,
                  supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Where to sample the source so that the points `src` land on `dst`, for an output of `shape`
    (H, W): maps x and y, each (k^2, H, W) float32, one per sub-pixel sample (k = `supersample`).

    src, dst: (N, 2) float pixel coordinates; triangles: (M, 3) int, which should cover the whole
    output; order: (M,) triangle indices from back to front. Pixels no triangle covers sample
    their own place. `smooth` > 0 blurs the displacement field with that sigma (px), which hides
    the creases where coarse neighbouring triangles stretch differently; the triangles flagged in
    `sharp` (M,) bool (fine detail such as eyelids) are left unblurred.
    """
    h, w = shape
    k = supersample
    affines, valid = triangle_affines(src, dst, triangles)
    # Per triangle: its affine map, then its source bounding box grown by a pixel. Pixels that
    # rasterization gives a sliver triangle lie partly outside it, where the affine map
    # extrapolates wildly: the box keeps their samples near the triangle.
    corners_src = src[triangles]  # (M, 3, 2)
    table = np.concatenate([affines.reshape(-1, 6), corners_src.min(1) - 1, corners_src.max(1) + 1], 1)
    no_triangle = [1, 0, 0, 0, 1, 0, -np.inf, -np.inf, np.inf, np.inf]  # identity map, no box
    table = np.concatenate([table, [no_triangle]]).astype(np.float32)  # (M + 1, 10)
    # Triangle index at each of k x k sub-pixel points per pixel, drawn back to front.
    owner = np.full((h * k, w * k), len(triangles), np.int32)
    corners = np.round(((dst[triangles] + 0.5) * k - 0.5) * (1 << SUBPIXEL_BITS)).astype(np.int32)  # (M, 3, 2)
    for i in order[valid[order]]:
        cv2.fillConvexPoly(owner, corners[i], int(i), cv2.LINE_8, SUBPIXEL_BITS)
    owner = owner.reshape(h, k, w, k).transpose(1, 3, 0, 2).reshape(k * k, h, w)  # (k^2, H, W)
    xs, ys = _pixel_grid(h, w)
    t = table[owner]  # (k^2, H, W, 10)
    map_x = np.clip(t[..., 0] * xs + t[..., 1] * ys + t[..., 2], t[..., 6], t[..., 8])
    map_y = np.clip(t[..., 3] * xs + t[..., 4] * ys + t[..., 5], t[..., 7], t[..., 9])
    if smooth > 0:
        blur = 1.0 if sharp is None else 1 - _smoothed(np.append(sharp, False)[owner].mean(0, dtype=np.float32), smooth)
        for maps, grid in ((map_x, xs), (map_y, ys)):
            shift = maps.mean(0) - grid  # (H, W) displacement
            maps += blur * (_smoothed(shift, smooth) - shift)
    return map_x, map_y


def warp_piecewise_affine(image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
                          order: np.ndarray, smooth: float = 0.0, sharp: np.ndarray | None = None,
                          supersample: int = 1) -> np.ndarray:
    """(H, W, C) uint8 image moved so that the points `src` land on `dst` (see `backward_maps`)."""
    map_x, map_y = backward_maps(src, dst, triangles, order, image.shape[:2], smooth, sharp, supersample)
    if supersample == 1:
        return cv2.remap(image, map_x[0], map_y[0], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    total = sum(cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
                for mx, my in zip(map_x, map_y))
    return np.round(total / len(map_x)).astype(np.uint8)
