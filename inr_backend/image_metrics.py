"""Image quality metrics on tensors: PSNR and SSIM (Wang et al. 2004).

SSIM uses an 11x11 Gaussian window with sigma 1.5 over valid positions (no padding),
constants K1 = 0.01 and K2 = 0.03 for a data range of 1, averaged over channels: the
settings of scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``, which the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (any equal shapes)."""
    mse = float(torch.mean((prediction.float() - target.float()) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(prediction: torch.Tensor, target: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two (H, W, C) or (H, W) images in [0, 1]."""
    if prediction.dim() == 2:
        prediction, target = prediction[..., None], target[..., None]
    x = prediction.float().permute(2, 0, 1)[:, None]        # (C, 1, H, W): channels as a batch
    y = target.float().permute(2, 0, 1)[:, None]
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    coords = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(image):
        return F.conv2d(image, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(value.mean())
