"""Pixel metrics: PSNR, MSE (torchmetrics), SSIM (ours, pinned to PIE-Bench's torchmetrics), L1/L2,
with PIE-Bench's and MagicBrush's conventions.

Images are 8-bit RGB arrays [H, W, 3] (what the benchmarks read from files); they become float32
in [0, 1] by ``/255`` exactly as the reference code does.

PIE-Bench background metrics (``evaluation/matrics_calculator.py``) multiply **both** images by
``1 - mask`` and then score the *whole* frame: the edited region is zero in both images, adds zero
error, yet still counts in the mean. PSNR is therefore inflated (and MSE deflated) by
``10*log10(H*W / background_pixels)`` dB relative to the error of the background pixels alone, and
SSIM is pulled towards 1 by the constant zero region. SSIM averages the map without its 5-pixel
border, as the torchmetrics release PIE-Bench used did, and is computed here so that no later
torchmetrics release changes it (see :func:`ssim`). We keep this quirk in the ``*_bg`` metrics so
our numbers are comparable with the published tables, and report the background-only values too
(:func:`psnr_background_only`, :func:`mse_background_only`: the mean over background pixels).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def unit_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1] (``np.array(img).astype(np.float32)/255``)."""
    return torch.from_numpy(np.ascontiguousarray(image_u8).astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def pie_masked(image_u8: np.ndarray, keep: np.ndarray | None) -> torch.Tensor:
    """PIE-Bench's preprocessing: image/255 times the 0/1 ``keep`` map (broadcast over channels)."""
    x = unit_tensor(image_u8)
    if keep is not None:
        x = x * torch.from_numpy(np.asarray(keep, dtype=np.float32))[None, None]
    return x


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics PSNR with data_range=1 (PIE-Bench's settings); ``inf`` for identical inputs."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


SSIM_PAD = 5  # radius of the 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_taps(radius: int = SSIM_PAD, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """torchmetrics' ``_gaussian``: exp(-(d / sigma)^2 / 2) at d = -radius..radius, normalised."""
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-((d / sigma) ** 2) / 2)
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM as PIE-Bench's torchmetrics computed it (``StructuralSimilarityIndexMeasure(data_range=1.0)``,
    a release before 1.4): Gaussian window 11 / sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, weighted
    population moments without a clamp, the map averaged over the positions whose window lies inside
    the image (torchmetrics reflect-padded the input and dropped that 5-pixel border again), all
    channels alike. Inputs [1, C, H, W] float in [0, 1].

    Computed here, not by torchmetrics, so the value does not depend on the installed release:
    torchmetrics 1.5 (PR #2721, 2024) averages the padded border too, and 1.4 clamps negative
    variances. The border change is not small at the benchmark's reported scale (x10^2): measured
    with ``benchmarks/ssim_border.py`` (ComfyUI's example.png at 512 x 512 plus Gaussian noise) it moves
    SSIM x10^2 by -0.09 at 29.9 dB without a mask and by +1.28 at 28.7 dB with a PIE-style mask (a
    central box of a quarter of the image and the 1-pixel border, zeroed in both images); the review
    that asked for this measured +0.26 at 29 dB on its images. It depends on the content and the mask;
    this function keeps the benchmark's number."""
    if a.shape[-2] <= 2 * SSIM_PAD or a.shape[-1] <= 2 * SSIM_PAD:
        raise ValueError(f"SSIM needs images larger than {2 * SSIM_PAD} x {2 * SSIM_PAD} pixels")
    channels = a.shape[1]
    g = _gaussian_taps().to(a.device)
    kernel = torch.outer(g, g).expand(channels, 1, 2 * SSIM_PAD + 1, 2 * SSIM_PAD + 1).to(a.dtype)
    stack = torch.cat((a, b, a * a, b * b, a * b))  # (5, C, H, W)
    mu_a, mu_b, e_aa, e_bb, e_ab = torch.nn.functional.conv2d(stack, kernel, groups=channels).split(1)  # valid only
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    var_a, var_b, cov = e_aa - mu_a * mu_a, e_bb - mu_b * mu_b, e_ab - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return float(index.mean())


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics MeanSquaredError: the mean over every element."""
    from torchmetrics.functional import mean_squared_error

    return float(mean_squared_error(a.contiguous(), b.contiguous()))


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """``nn.L1Loss()`` (MagicBrush / Emu Edit): mean absolute difference over every element."""
    return float(torch.nn.functional.l1_loss(a, b))


def l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``nn.MSELoss()`` (MagicBrush's "L2"): mean squared difference over every element."""
    return float(torch.nn.functional.mse_loss(a, b))


def mse_background_only(a_u8: np.ndarray, b_u8: np.ndarray, keep: np.ndarray) -> float:
    """Mean squared error over the background pixels only (no zeroed region in the mean)."""
    keep = np.asarray(keep, dtype=np.float64) > 0.5
    n = int(keep.sum())
    if n == 0:
        return float("nan")
    diff = (a_u8.astype(np.float64) - b_u8.astype(np.float64)) / 255.0
    return float((diff[keep] ** 2).mean())


def psnr_background_only(a_u8: np.ndarray, b_u8: np.ndarray, keep: np.ndarray) -> float:
    """PSNR of the background pixels alone (data range 1)."""
    err = mse_background_only(a_u8, b_u8, keep)
    if math.isnan(err):
        return err
    return float("inf") if err == 0 else 10.0 * math.log10(1.0 / err)
