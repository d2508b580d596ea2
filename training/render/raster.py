"""Anti-aliased drawing with approximate signed distance fields, in float32 numpy.

Shapes are signed distances evaluated per pixel in canonical units (negative inside);
coverage ramps linearly over one pixel, which anti-aliases every edge without supersampling.
Each shape is evaluated only inside its own pixel window, which keeps a 112 px face at a few
milliseconds on one core.

Numbers that meet pixel arrays are plain Python floats on purpose: a ``np.float64`` scalar
would silently promote every float32 array it touches to float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.vision.align import invert_affine

Colour = np.ndarray | tuple[float, float, float]  # float RGB in [0, 1], or (h, w, 3) per pixel
WindowKey = tuple[int, int, int, int]  # row start, row stop, column start, column stop (pixels)

# Shapes fainter than this opacity are skipped: invisible after rounding to uint8, and not free.
MIN_LINE_ALPHA = 0.01
MIN_FILL_ALPHA = 0.005
WINDOW_MARGIN_PX = (1, 2)  # pixels added before / after a shape's box, for its anti-aliased rim
MAX_LINE_SLOPE = 2.0  # coverage-ramp slope cap for a line: its profile stays soft at large sizes
MIN_SEGMENT_LEN2 = 1e-9  # squared length below which a segment counts as a point
MIN_LINE_WIDTH = 1e-3  # canonical units; keeps the ramp slope finite for hairline strokes
PIXEL_MAX = 255.0  # the 0..255 scale images are drawn on before the cast to uint8


def pixel_grids(inverse: list[float], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(x, y)`` of every pixel centre, two ``(h, w)`` float32 arrays (``inverse``: the
    pixel -> canonical matrix, row-major ``(2, 3)`` as plain floats)."""
    cols = np.arange(w, dtype=np.float32)[None, :]
    rows = np.arange(h, dtype=np.float32)[:, None]
    ip = inverse
    return cols * ip[0] + (rows * ip[1] + ip[2]), cols * ip[3] + (rows * ip[4] + ip[5])


def matrix_floats(matrix: np.ndarray) -> list[float]:
    """A matrix's entries, row-major, as plain floats (they keep float32 arrays float32)."""
    return [float(v) for v in np.asarray(matrix).ravel()]


class Window:
    """A pixel window of the canvas with the canonical coordinates of its pixels."""

    __slots__ = ("rs", "cs", "x", "y")

    def __init__(self, rs: slice, cs: slice, x: np.ndarray, y: np.ndarray) -> None:
        self.rs, self.cs, self.x, self.y = rs, cs, x, y  # x, y: (h, w) float32 canonical

    @property
    def key(self) -> WindowKey:
        """The window's pixel bounds, to cache what was computed over it."""
        return (self.rs.start, self.rs.stop, self.cs.start, self.cs.stop)


class Canvas:
    """A float32 ``(H, W, 3)`` RGB image plus the canonical -> pixel affine matrix."""

    def __init__(
        self, image: np.ndarray, matrix: np.ndarray, grids: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        self.img = image
        self.h, self.w = image.shape[:2]
        self.m = np.asarray(matrix, dtype=np.float64)
        self.inv = invert_affine(self.m)
        self.mp = matrix_floats(self.m)
        self.ip = matrix_floats(self.inv)
        # canonical units per pixel; 1/px is the slope of the one-pixel coverage ramp
        self.k = float(math.sqrt(abs(np.linalg.det(self.m[:, :2]))))
        # canonical x, y of every pixel, (h, w) float32 each; windows slice views of them
        self.gx, self.gy = grids if grids is not None else pixel_grids(self.ip, self.h, self.w)

    def window(self, x0: float, y0: float, x1: float, y1: float, dx: float = 0.0) -> Window | None:
        """Pixels covering the canonical box, with canonical coords shifted by ``-dx`` (yaw offsets)."""
        m = self.mp
        xa, xb = x0 + dx, x1 + dx
        # pixel position of the 4 box corners, in plain floats: this runs ~40 times per face
        px = (m[0] * xa + m[1] * y0, m[0] * xb + m[1] * y0, m[0] * xa + m[1] * y1, m[0] * xb + m[1] * y1)
        py = (m[3] * xa + m[4] * y0, m[3] * xb + m[4] * y0, m[3] * xa + m[4] * y1, m[3] * xb + m[4] * y1)
        before, after = WINDOW_MARGIN_PX
        c0 = max(int(math.floor(min(px) + m[2])) - before, 0)
        c1 = min(int(math.ceil(max(px) + m[2])) + after, self.w)
        r0 = max(int(math.floor(min(py) + m[5])) - before, 0)
        r1 = min(int(math.ceil(max(py) + m[5])) + after, self.h)
        if c0 >= c1 or r0 >= r1:
            return None
        x = self.gx[r0:r1, c0:c1]
        if dx != 0.0:
            x = x - dx
        return Window(slice(r0, r1), slice(c0, c1), x, self.gy[r0:r1, c0:c1])

    def cover(self, d: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage of a signed distance (canonical units, negative inside)."""
        return clip01(0.5 - d * self.k)

    def paint(self, win: Window, alpha: np.ndarray, colour: Colour) -> None:
        """Blend ``colour`` over the window's pixels with per-pixel opacity ``alpha``."""
        sub = self.img[win.rs, win.cs]
        sub += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - sub)


def clip01(a: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (two ufuncs; ``np.clip``'s Python wrapper costs more than the work here)."""
    np.maximum(a, 0.0, out=a)
    return np.minimum(a, 1.0, out=a)


def soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft falloff for shadows and lines: 1 inside, 0 beyond ``width`` outside."""
    return clip01(0.5 - d * (1.0 / width))


def segment_distance(x: np.ndarray, y: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Distance from each point to the segment a-b (plain-float endpoints keep float32 arrays float32)."""
    vx, vy = bx - ax, by - ay
    px, py = x - ax, y - ay
    t = clip01((px * vx + py * vy) * (1.0 / max(vx * vx + vy * vy, MIN_SEGMENT_LEN2)))
    return np.hypot(px - t * vx, py - t * vy)


def _line_coverage(cv: Canvas, d: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a line ``width`` wide around distance ``d``; thin lines keep a soft profile of
    their own width even at large sizes."""
    return clip01(0.5 - (d - 0.5 * width) * min(cv.k, MAX_LINE_SLOPE / max(width, MIN_LINE_WIDTH)))


def _window_around(cv: Canvas, points: list[tuple[float, float]], pad: float, dx: float) -> Window | None:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return cv.window(min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad, dx)


def stroke(
    cv: Canvas, lines: list[list[tuple[float, float]]], width: float, colour: Colour, alpha: float, dx: float = 0.0
) -> None:
    """Soft lines of ``width`` along polylines (one window for all), painted at opacity ``alpha``."""
    if alpha <= MIN_LINE_ALPHA:
        return
    win = _window_around(cv, [p for line in lines for p in line], width + 1.0, dx)
    if win is None:
        return
    d = None
    for line in lines:
        for (ax, ay), (bx, by) in zip(line[:-1], line[1:]):
            ds = segment_distance(win.x, win.y, ax, ay, bx, by)
            d = ds if d is None else np.minimum(d, ds)
    if d is None:  # no segment at all
        return
    a = _line_coverage(cv, d, width)
    a *= alpha
    cv.paint(win, a, colour)


def curves(
    cv: Canvas,
    parabolas: Sequence[tuple[tuple[float, float], ...]],
    width: float,
    colour: Colour,
    alpha: float,
    dx: float = 0.0,
    alpha_x: tuple[float, float, float, float] | None = None,
    vertical: bool = False,
) -> None:
    """Soft lines along mostly horizontal parabolas ``y(x)``, each through 3 points (end, middle, end).

    The vertical distance stands in for the true one: ~4x cheaper than segments and exact
    enough for creases whose slope stays small. ``vertical=True`` swaps the axes (``x(y)``
    curves, for folds that run downwards). ``alpha_x = (centre_alpha, outer_alpha, half_width,
    centre_x)`` instead varies the opacity with the distance from ``centre_x`` (forehead lines:
    AU1 acts in the middle, AU2 at the sides).
    """
    if alpha_x is None and alpha <= MIN_LINE_ALPHA:
        return
    win = _window_around(cv, [p for c in parabolas for p in c], width + 1.0, dx)
    if win is None:
        return
    x, y = (win.y, win.x) if vertical else (win.x, win.y)
    d = None
    for pts in parabolas:
        (x0, y0), (x1, y1), (x2, y2) = ((p[1], p[0]) for p in pts) if vertical else pts
        # Newton form of the parabola through the three points
        c1 = (y1 - y0) / (x1 - x0)
        c2 = ((y2 - y1) / (x2 - x1) - c1) / (x2 - x0)
        dc = np.abs(y - (y0 + (x - x0) * (c1 + c2 * (x - x1))))
        lo, hi = min(x0, x2), max(x0, x2)
        dc = np.maximum(dc, np.maximum(lo - x, x - hi))
        d = dc if d is None else np.minimum(d, dc)
    if d is None:  # no parabola at all
        return
    a = _line_coverage(cv, d, width)
    if alpha_x is not None:
        ca, oa, hw, cx = alpha_x
        f = clip01(np.abs(win.x - cx) * (1.0 / hw) - 0.5)
        a *= ca + (oa - ca) * f
    else:
        a *= alpha
    cv.paint(win, a, colour)


def ellipse(
    cv: Canvas,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    colour: Colour,
    alpha: float = 1.0,
    softness: float = 0.0,
    dx: float = 0.0,
) -> None:
    """Filled ellipse; ``softness`` > 0 blurs its edge over that many canonical units."""
    if alpha <= MIN_FILL_ALPHA:
        return
    pad = softness + 1.0
    win = cv.window(cx - rx - pad, cy - ry - pad, cx + rx + pad, cy + ry + pad, dx)
    if win is None:
        return
    r = np.hypot((win.x - cx) * (1.0 / rx), (win.y - cy) * (1.0 / ry))
    d = (r - 1.0) * min(rx, ry)
    a = soft(d, softness) if softness > 0 else cv.cover(d)
    if alpha < 1.0:
        a *= alpha
    cv.paint(win, a, colour)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """0..255 float32 -> uint8, rounded and clipped (in place on ``img``)."""
    np.maximum(img, -0.5, out=img)
    np.minimum(img, PIXEL_MAX - 0.5, out=img)
    img += 0.5
    return img.astype(np.uint8)
