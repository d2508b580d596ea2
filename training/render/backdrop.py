"""What lies behind the face or over the whole picture and never moves with the expression:
background, long hair, clothes, neck, ears, and sensor noise. A face and its poker face share
all of it, so it is drawn once per pair."""

from __future__ import annotations

import math

import numpy as np

from training.render.geometry import EAR_YAW_SHIFT, FACE_MIDLINE_X
from training.render.params import BACKGROUND_BLOTCHY, BACKGROUND_GRADIENT, HAIR_LONG, Identity, Scene
from training.render.raster import PIXEL_MAX, Canvas, clip01, ellipse

# The scene seed feeds two independent streams, so that the noise does not depend on the background.
BACKGROUND_STREAM = 1
NOISE_STREAM = 2
BLOTCH_GRID = 5  # value-noise lattice points per side of a blotchy background
UNIFORM_STD_FACTOR = math.sqrt(12.0)  # a uniform on [-0.5, 0.5) times this has unit std
TRIANGULAR_STD_FACTOR = math.sqrt(6.0)  # the sum of two uniforms on [0, 1) minus 1, times this, has unit std
EAR_Y = 60.6  # canonical y of the ear centres, level with the eyes
NECK_HALF_WIDTH = 0.62  # x face half width
CHIN_SHADOW_LENGTH = 14.0  # canonical units over which the neck darkens below the chin
LONG_HAIR_BOTTOM = 138.0  # canonical y where long hair ends (below the template square)


def background(scene: Scene, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32 background: flat, linear gradient, or blotchy value noise."""
    c0 = np.asarray(scene.bg_colours[0], dtype=np.float32)
    c1 = np.asarray(scene.bg_colours[1], dtype=np.float32)
    rng = np.random.default_rng([scene.seed, BACKGROUND_STREAM])
    if scene.background == BACKGROUND_GRADIENT:
        ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
        t = xs * np.float32(math.cos(scene.bg_angle)) + ys * np.float32(math.sin(scene.bg_angle)) + 0.5
        img = c0 + t[..., None] * (c1 - c0)
    elif scene.background == BACKGROUND_BLOTCHY:
        g = BLOTCH_GRID
        grid = rng.uniform(0.0, 1.0, (g, g, 1)).astype(np.float32)
        grid = c0 + grid * (c1 - c0)  # (g, g, 3)
        # bilinear interpolation of the lattice, written as two tent-weight matrices
        ay = np.maximum(0.0, 1.0 - np.abs(np.linspace(0, g - 1, h, dtype=np.float32)[:, None] - np.arange(g)))
        ax = np.maximum(0.0, 1.0 - np.abs(np.linspace(0, g - 1, w, dtype=np.float32)[:, None] - np.arange(g)))
        img = np.einsum("hi,ijc,wj->hwc", ay, grid, ax, optimize=True).astype(np.float32)
    else:
        img = np.broadcast_to(c0, (h, w, 3)).copy()
    if scene.bg_grain > 0:
        grain = rng.random((h, w, 1), dtype=np.float32)
        grain -= 0.5
        grain *= scene.bg_grain * UNIFORM_STD_FACTOR  # uniform grain with std bg_grain
        img += grain
    return img


def sensor_noise(scene: Scene, h: int, w: int) -> np.ndarray | None:
    """Sensor noise ``(h, w, 3)`` float32 in 0..255 units from the scene seed, None when the scene has none.

    Triangular (sum of two uniforms) with the scene's standard deviation: close enough to
    Gaussian for sensor grain and 2x cheaper to draw than ``standard_normal``.
    """
    if scene.noise_sigma <= 0:
        return None
    rng = np.random.default_rng([scene.seed, NOISE_STREAM])
    noise = rng.random((h, w, 3), dtype=np.float32)
    noise += rng.random((h, w, 3), dtype=np.float32)
    noise -= 1.0
    noise *= scene.noise_sigma * TRIANGULAR_STD_FACTOR * PIXEL_MAX
    return noise


def back_layers(
    idn: Identity, scene: Scene, matrix: np.ndarray, grids: tuple[np.ndarray, np.ndarray], h: int, w: int
) -> np.ndarray:
    """Background and the layers behind the face (long hair, clothes, neck, ears):
    ``(h, w, 3)`` float32 in [0, 1] units, shared by a face and its poker face."""
    cv = Canvas(background(scene, h, w), matrix, grids)
    skin = np.asarray(idn.skin, dtype=np.float32)
    hair = np.asarray(idn.hair, dtype=np.float32)
    cx, fw, cy = FACE_MIDLINE_X, idn.face_w, idn.face_cy
    if idn.hair_style == HAIR_LONG:  # the locks that fall behind the shoulders
        win = cv.window(cx - fw - 12, cy - 10, cx + fw + 12, 150)
        if win is not None:
            d = np.maximum(
                np.abs(win.x - cx) - (fw + idn.hair_volume + 1.0) - 0.06 * (win.y - cy),
                np.maximum(win.y - LONG_HAIR_BOTTOM, (cy - 8) - win.y),
            )
            cv.paint(win, cv.cover(d), hair * np.float32(0.8))
    ellipse(cv, cx, idn.chin_y + 42.0, fw * 1.9, 30.0, idn.clothes)  # shoulders
    win = cv.window(cx - fw, cy, cx + fw, idn.chin_y + 40)
    if win is not None:
        d = np.maximum(np.abs(win.x - cx) - fw * NECK_HALF_WIDTH, np.maximum(cy - win.y, win.y - (idn.chin_y + 30.0)))
        shade = clip01((win.y - idn.chin_y) * (1.0 / CHIN_SHADOW_LENGTH))[..., None]  # shadow under the chin
        cv.paint(win, cv.cover(d), skin * (0.62 + 0.2 * shade))
    for s in (-1.0, 1.0):
        ex = cx + s * (fw - 0.5) - EAR_YAW_SHIFT * scene.yaw
        ellipse(cv, ex, EAR_Y, idn.ear_r, idn.ear_r * 2.1, skin * np.float32(0.88))
        ellipse(
            cv, ex + s * 0.8, EAR_Y, idn.ear_r * 0.45, idn.ear_r * 1.3, skin * np.float32(0.68), alpha=0.7, softness=1.0
        )
    return cv.img
