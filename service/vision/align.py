"""Five-point face alignment: a similarity transform to a fixed template, then a bilinear warp.

Images are ``(H, W, 3) uint8`` RGB arrays; points are ``(5, 2)`` float ``(x, y)`` pixel
coordinates in the order left eye, right eye, nose tip, left mouth corner, right mouth
corner ("left" as seen in the image). Pixel centres sit on integer coordinates, the
convention of the template below.
"""

from __future__ import annotations

import numpy as np

# Standard 5-point template for a 112x112 crop; scaled linearly for other sizes.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)


def template_landmarks(size: int) -> np.ndarray:
    """The 5-point template for a ``size`` x ``size`` crop. Returns ``(5, 2)`` float64."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return TEMPLATE_112 * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) src -> dst.

    Umeyama's closed form, without reflection. Args are ``(N, 2)`` point sets, N >= 2.
    Returns the ``(2, 3)`` float64 matrix ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / n
    if src_var < 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / n  # (2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # keep a proper rotation, never a mirror
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine matrix, as a ``(2, 3)`` matrix."""
    a = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(a)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], border_value: int = 0) -> np.ndarray:
    """Warp ``image`` by the ``(2, 3)`` matrix mapping source to output pixel coordinates.

    Bilinear interpolation; output pixels whose source falls outside the image take
    ``border_value``. ``size`` is ``(width, height)``. Works on ``(H, W)`` or ``(H, W, C)``
    arrays and returns the input dtype (uint8 results are rounded and clipped).
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    out_w, out_h = int(size[0]), int(size[1])
    inv = invert_affine(matrix)
    xs = np.arange(out_w, dtype=np.float64)[None, :]
    ys = np.arange(out_h, dtype=np.float64)[:, None]
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]  # (out_h, out_w)
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    h, w = img.shape[:2]
    x0 = np.floor(src_x).astype(np.int64)
    y0 = np.floor(src_y).astype(np.int64)
    fx = src_x - x0
    fy = src_y - y0
    # The four taps of every output pixel, gathered at once: (4, out_h, out_w) coordinates.
    yy = np.stack([y0, y0, y0 + 1, y0 + 1])
    xx = np.stack([x0, x0 + 1, x0, x0 + 1])
    inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    rows, cols = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
    # Gather first, convert after: only the sampled pixels, never the whole image.
    if img.flags.c_contiguous:  # one take along the flattened pixels, far cheaper than 2-D fancy indexing
        taps = np.take(img.reshape(h * w, -1), rows * w + cols, axis=0).reshape(*rows.shape, *img.shape[2:])
    else:
        taps = img[rows, cols]
    if img.ndim == 3:  # channels first, so that every product runs along whole rows of pixels
        taps = np.moveaxis(taps, -1, 1)  # (4, C, out_h, out_w)
        inside = inside[:, None]
    if not inside.all():
        taps = np.where(inside, taps, np.float32(border_value))
    # float64 like the weights (pixels, and a border value, are exact in it): no mixed-type
    # products; one tap at a time, so that no temporary is four taps large.
    v00, v01, v10, v11 = (np.ascontiguousarray(tap, dtype=np.float64) for tap in taps)
    top = v00 * (1 - fx) + v01 * fx
    bottom = v10 * (1 - fx) + v11 * fx
    out = top * (1 - fy) + bottom * fy
    if img.ndim == 3:
        out = np.moveaxis(out, 0, -1)  # (out_h, out_w, C)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.astype(img.dtype))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop and align one face to the ``size`` x ``size`` template.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        landmarks: ``(5, 2)`` detected points in ``image`` pixel coordinates.
        size: side of the square output in pixels.

    Returns:
        ``(aligned, matrix)``: the ``(size, size, 3) uint8`` RGB face and the ``(2, 3)``
        matrix that maps ``image`` coordinates to ``aligned`` coordinates.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix = estimate_similarity(landmarks, template_landmarks(size))
    return warp_affine(image, matrix, (size, size)), matrix


def normalise(faces: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """``(B, H, W, 3) uint8`` RGB faces -> ``(B, 3, H, W) float32`` network input.

    Pixels are scaled to [0, 1], then ``(x - mean) / std`` per channel (RGB order).
    """
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (B, H, W, 3), got {faces.shape}")
    x: np.ndarray = faces.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def to_uint8_images(x: np.ndarray) -> np.ndarray:
    """``(B, 3, H, W)`` float images in [0, 1] -> ``(B, H, W, 3) uint8`` RGB (clipped, rounded)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got {x.shape}")
    return np.clip(np.rint(x.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)
