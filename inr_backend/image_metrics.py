"""Image quality metrics on tensors: PSNR and SSIM (Wang et al. 2004), shared by the image and
nerf tasks and their benchmarks.

SSIM uses an 11x11 Gaussian window with sigma 1.5 over the windows that lie wholly inside
the image, K1 = 0.01, K2 = 0.03 and population covariances, averaged over channels: the
number scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=..., channel_axis=-1)`` gives (tests compare them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of equal shape."""
    mse = torch.mean((prediction.double() - target.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """(size,) normalised Gaussian taps (scipy.ndimage.gaussian_filter's, truncated at the radius)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, *,
         window: int = 11, sigma: float = 1.5) -> float | None:
    """Mean SSIM of two (H, W, C) or (H, W) images; None when a side is shorter than the window.

    Computed in float64 with separable convolutions.
    """
    if target.dim() == 2:
        prediction, target = prediction[..., None], target[..., None]
    height, width, channels = target.shape
    if min(height, width) < window:
        return None
    taps = gaussian_window(window, sigma, device=target.device)
    kernel_x = taps.reshape(1, 1, 1, window).expand(channels, 1, 1, window)
    kernel_y = taps.reshape(1, 1, window, 1).expand(channels, 1, window, 1)

    def blur(image: torch.Tensor) -> torch.Tensor:   # (1, C, H, W) -> (1, C, H-10, W-10), per channel
        return F.conv2d(F.conv2d(image, kernel_x, groups=channels), kernel_y, groups=channels)

    x = prediction.double().permute(2, 0, 1)[None]
    y = target.double().permute(2, 0, 1)[None]
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
