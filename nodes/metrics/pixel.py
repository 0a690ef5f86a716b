"""Pixel metrics: PSNR, SSIM, MSE (torchmetrics), L1/L2, with PIE-Bench's and MagicBrush's conventions.

Images are 8-bit RGB arrays [H, W, 3] (what the benchmarks read from files); they become float32
in [0, 1] by ``/255`` exactly as the reference code does.

PIE-Bench background metrics (``evaluation/matrics_calculator.py``) multiply **both** images by
``1 - mask`` and then score the *whole* frame: the edited region is zero in both images, adds zero
error, yet still counts in the mean. PSNR is therefore inflated (and MSE deflated) by
``10*log10(H*W / background_pixels)`` dB relative to the error of the background pixels alone, and
SSIM is pulled towards 1 by the constant zero region. SSIM averages the map without its 5-pixel
border, as the torchmetrics release PIE-Bench used did (see :func:`ssim`). We keep this quirk in the ``*_bg`` metrics so
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


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """torchmetrics SSIM (data_range=1, Gaussian window 11 / sigma 1.5), mean over the map without
    its 5-pixel border.

    PIE-Bench ran torchmetrics before 1.5, whose SSIM dropped the border of the reflect-padded map
    before averaging (the same as scikit-image and the original MATLAB code); torchmetrics 1.5
    (PR #2721, 2024) averages the padded border too, which moves values by ~1e-3. We take
    torchmetrics' full SSIM map and crop it as the benchmark's version did."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)
    if full.shape[-2] <= 2 * SSIM_PAD or full.shape[-1] <= 2 * SSIM_PAD:
        raise ValueError(f"SSIM needs images larger than {2 * SSIM_PAD} x {2 * SSIM_PAD} pixels")
    return float(full[..., SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD].mean())


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
