"""Image-fidelity measures for generated poker faces: PSNR and SSIM (pure numpy).

Images are ``(N, H, W, 3) uint8`` RGB (or float in [0, 255]); results are per image.
"""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image; identical images give +inf."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / mse)


def _gaussian_kernel(sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over axes 1 and 2 of ``(N, H, W, C)``."""
    r = len(kernel)
    h, w = x.shape[1] - r + 1, x.shape[2] - r + 1
    rows = sum(kernel[i] * x[:, i : i + h] for i in range(r))
    return sum(kernel[j] * rows[:, :, j : j + w] for j in range(r))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> np.ndarray:
    """Structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03), mean over
    pixels and channels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 3:
        a, b = a[..., None], b[..., None]
    k = _gaussian_kernel()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _blur(a, k), _blur(b, k)
    var_a = _blur(a * a, k) - mu_a**2
    var_b = _blur(b * b, k) - mu_b**2
    cov = _blur(a * b, k) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.reshape(s.shape[0], -1).mean(axis=1)
