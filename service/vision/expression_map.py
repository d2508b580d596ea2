"""Expression maps: where on a face its expression sits, from the face and its poker face.

PF-ViT's poker face is the face with the emotion taken out, so the emotion is what the
aligned face has and its poker face lacks. The map is ``|aligned - poker|`` averaged over the
RGB channels, smoothed with a Gaussian, with the face's own background level (a low
percentile of the smoothed difference) taken off, and normalised so that each face's hottest
point is 1. No model beyond the poker-face graph is involved.

Pure functions on arrays: faces are ``(H, W, 3) uint8`` RGB, maps ``(H, W) float32`` in
[0, 1]. Nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from service.vision.imaging import encode_png

# Smoothing scale as a fraction of the face side: 48 px faces get sigma 1.44 px, 112 px 3.4 px.
# Wide enough to merge a generator's pixel speckle into regions, narrow enough to keep the
# mouth apart from the eyes.
SIGMA_FRACTION = 0.03
# The smoothed difference below this percentile of the face is background (generator noise
# spread evenly over the face), taken off before normalising.
FLOOR_PERCENTILE = 50.0
# A face whose smoothed difference from its poker face peaks below this many grey levels has no
# expression to show (PNG rounding alone differs by one); its map is all zero, not noise
# stretched to full scale.
MIN_PEAK_GREY = 1.0
# Overlay opacity of the hottest point; cold points leave the face untouched.
OVERLAY_ALPHA = 0.75


def gaussian_kernel(sigma_px: float) -> np.ndarray:
    """Normalised 1-D Gaussian, ``(2r + 1,)`` float32, r = ceil(3 sigma)."""
    radius = max(1, int(np.ceil(3.0 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a ``(H, W)`` float array, edges reflected."""
    if sigma_px <= 0:
        return image.astype(np.float32, copy=True)
    k = gaussian_kernel(sigma_px)
    r = len(k) // 2
    out = image.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > r else "edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (padded[i : i + n, :] if axis == 0 else padded[:, i : i + n])
        out = acc
    return out


def difference_map(aligned: np.ndarray, poker: np.ndarray, sigma_px: float | None = None) -> np.ndarray:
    """Smoothed ``|aligned - poker|`` in grey levels, ``(H, W) float32``, before any normalising."""
    if aligned.shape != poker.shape or aligned.ndim != 3 or aligned.shape[2] != 3:
        raise ValueError(f"aligned and poker must be the same (H, W, 3) shape, got {aligned.shape} and {poker.shape}")
    diff = np.abs(aligned.astype(np.float32) - poker.astype(np.float32)).mean(axis=2)  # (H, W)
    sigma = SIGMA_FRACTION * max(aligned.shape[:2]) if sigma_px is None else sigma_px
    return gaussian_blur(diff, sigma)


def expression_map(
    aligned: np.ndarray,
    poker: np.ndarray,
    *,
    sigma_px: float | None = None,
    floor_percentile: float = FLOOR_PERCENTILE,
) -> np.ndarray:
    """The expression map of one face: ``(H, W) float32`` in [0, 1], hottest point 1.

    Args:
        aligned: ``(H, W, 3) uint8`` RGB aligned face.
        poker: ``(H, W, 3) uint8`` RGB poker face of that face.
        sigma_px: Gaussian sigma in pixels; ``SIGMA_FRACTION`` of the face side by default.
        floor_percentile: percentile of the smoothed difference taken off as background
            (0 keeps everything).

    A face that differs from its poker face by less than ``MIN_PEAK_GREY`` (after the floor)
    gives an all-zero map.
    """
    smooth = difference_map(aligned, poker, sigma_px)
    if floor_percentile > 0:
        smooth = np.maximum(smooth - np.percentile(smooth, floor_percentile), 0.0)
    peak = float(smooth.max())
    if peak < MIN_PEAK_GREY:
        return np.zeros_like(smooth)
    return (smooth / peak).astype(np.float32)


def mass_inside(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total mass on the ``True`` pixels of ``region`` (0 for an empty map)."""
    total = float(heat.sum())
    return float(heat[region].sum()) / total if total > 0 else 0.0


# A perceptual dark-to-bright ramp (black, purple, red, orange, pale yellow), interpolated to
# 256 entries; close to matplotlib's "inferno" without depending on it.
_RAMP_STOPS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def true_expression_region(face: np.ndarray, poker: np.ndarray, sigma_px: float) -> np.ndarray:
    """Where a face's *true* poker face (a rendered face's, which the renderer gives) differs
    from it by more than 4 grey levels, widened by the map's own blur (a blurred map cannot be
    sharper than its blur): the region a good expression map puts its mass on."""
    changed = np.abs(face.astype(np.float32) - poker.astype(np.float32)).mean(axis=2) > 4.0
    return gaussian_blur(changed.astype(np.float32), sigma_px) > 0.05


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """``(...)`` floats in [0, 1] -> ``(..., 3) float32`` RGB in [0, 255]."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP_STOPS) - 1)
    lo = np.floor(v).astype(np.int64)
    hi = np.minimum(lo + 1, len(_RAMP_STOPS) - 1)
    t = (v - lo)[..., None]
    return _RAMP_STOPS[lo] * (1.0 - t) + _RAMP_STOPS[hi] * t


def overlay(aligned: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The map drawn over the face: ``(H, W, 3) uint8`` RGB; opacity grows with the heat."""
    if heat.shape != aligned.shape[:2]:
        raise ValueError(f"map {heat.shape} does not match face {aligned.shape[:2]}")
    a = (alpha * np.clip(heat, 0.0, 1.0))[..., None]  # (H, W, 1)
    out = aligned.astype(np.float32) * (1.0 - a) + colour_ramp(heat) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def expression_map_png(aligned: np.ndarray, poker: np.ndarray) -> bytes:
    """PNG of the expression map overlaid on the aligned face (the face's own size)."""
    return encode_png(overlay(aligned, expression_map(aligned, poker)))


def expression_map_pngs(aligned: list[np.ndarray], pokers: np.ndarray | None) -> list[bytes]:
    """``expression_map_png`` of every face: ``aligned[i]`` ``(H, W, 3)`` with ``pokers[i]``."""
    if not aligned:
        return []
    if pokers is None or len(pokers) != len(aligned):
        raise ValueError(f"{len(aligned)} faces but {0 if pokers is None else len(pokers)} poker faces")
    return [expression_map_png(face, poker) for face, poker in zip(aligned, pokers)]
