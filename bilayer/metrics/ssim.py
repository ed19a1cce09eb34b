"""SSIM (paper App. B.2, Table 2): structural similarity of the synthesized and target frames.

The standard Gaussian-window SSIM of Wang et al. (2004): an 11x11 window of std 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, computed per colour channel and averaged. Images
come in the model's range [-1, 1] and are mapped to [0, 1] by (x + 1) / 2, clamped, so the
dynamic range L in C1 = (K1 L)^2, C2 = (K2 L)^2 is 1.

Only windows that lie wholly inside the image are averaged ("valid" filtering). This equals
`skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)`, which filters with reflected
borders and then crops the (11 - 1) / 2 border pixels before averaging.

`ssim_by_region` splits that mean into the windows wholly in the target's background and the rest:
on the foreground protocol the background is black in the target, so a soft predicted mask costs
there what a copied source (cut with its true mask) gets nearly free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bilayer.io.images import to_unit_range

WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """(size, size) normalized Gaussian kernel, the outer product of two 1-D kernels."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target: (B, C, H, W) in [-1, 1] -> (B, H - 10, W - 10) SSIM of every valid window,
    averaged over channels."""
    if pred.shape != target.shape or pred.dim() != 4:
        shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
        raise ValueError(f"ssim: expected two (B, C, H, W) tensors of one shape, got {shapes}")
    b, c, h, w = pred.shape
    if min(h, w) < WINDOW:
        raise ValueError(f"ssim: images must be at least {WINDOW}x{WINDOW}, got {h}x{w}")
    x, y = to_unit_range(pred.double()), to_unit_range(target.double())
    window = gaussian_window().to(x.device).expand(c, 1, WINDOW, WINDOW)  # (C, 1, 11, 11) depthwise

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=c)  # (B, C, H - 10, W - 10)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=1).to(pred.dtype)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target: (B, C, H, W) in [-1, 1] -> (B,) mean SSIM over channels and valid windows."""
    return ssim_map(pred, target).mean(dim=(1, 2))


def background_windows(mask: Tensor) -> Tensor:
    """mask: (B, 1, H, W) in [0, 1] -> (B, H - 10, W - 10) bool, True for the SSIM windows that lie
    wholly in the background (mask < 0.5 at every pixel)."""
    return F.max_pool2d(mask, WINDOW, stride=1)[:, 0] < 0.5


def ssim_by_region(pred: Tensor, target: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    """Mean SSIM of the foreground and of the background windows (`background_windows` of the
    target's mask): two (B,) tensors, NaN where a frame has no window of that region. The frame's
    SSIM is their mean weighted by the regions' window counts."""
    s = ssim_map(pred, target)  # (B, h, w)
    bg = background.to(s.dtype)

    def region_mean(weight: Tensor) -> Tensor:
        return (s * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))  # 0 / 0 = NaN: no such window

    return region_mean(1 - bg), region_mean(bg)
