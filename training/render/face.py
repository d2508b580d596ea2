"""Procedural frontal faces from identity parameters and FACS action-unit intensities.

Everything is drawn in one *canonical frame*: the 112 x 112 alignment template of
``service.vision.align`` (eyes at (38.3, 51.7) and (73.5, 51.5), nose tip at (56.0, 71.7),
mouth corners at (41.5, 92.4) and (70.7, 92.2)). A render is that frame mapped to pixels
by one affine matrix (template scale x small pose), so with zero pose the render *is* an
aligned face at any output size and its 5 landmarks land on ``template_landmarks(size)``.

Shapes are approximate signed distance fields evaluated per pixel in canonical units;
coverage ramps linearly over one pixel, which anti-aliases every edge without
supersampling. Each shape is evaluated only inside its own pixel window, which keeps a
112 px face at a few milliseconds on one core.

Images are ``(H, W, 3) uint8`` RGB; colours inside the module are float32 RGB in [0, 1].
Action units are ``(2, 14)`` float arrays in [0, 1]: row 0 acts on the image-left half of
the face, row 1 on the image-right half, columns in ``AU_CODES`` order. Symmetric
expressions have equal rows; unilateral ones (contempt) differ.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from service.vision.align import TEMPLATE_112, invert_affine

AU_CODES: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 20, 23, 26)
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    16: "lower lip depressor",
    20: "lip stretcher",
    23: "lip tightener",
    26: "jaw drop",
}
_AU_INDEX = {code: i for i, code in enumerate(AU_CODES)}

EMOTIONS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)

# EMFACS prototypes (PFVIT.md) with per-AU weights: a weight below 1 keeps one expression
# from collapsing onto another at full intensity (fear's jaw drop is smaller than surprise's,
# so the two differ by more than the brow lowerer alone).
PROTOTYPES: dict[str, dict[int, float]] = {
    "neutral": {},
    "happiness": {6: 1.0, 12: 1.0},
    "surprise": {1: 1.0, 2: 1.0, 5: 1.0, 26: 1.0},
    "sadness": {1: 1.0, 4: 0.8, 15: 1.0},
    "anger": {4: 1.0, 5: 0.6, 7: 0.8, 23: 1.0},
    "disgust": {9: 1.0, 15: 0.6, 16: 0.5},
    "fear": {1: 1.0, 2: 0.6, 4: 0.8, 5: 1.0, 7: 0.3, 20: 1.0, 26: 0.5},
    "contempt": {12: 1.0, 14: 1.0},  # unilateral
}
UNILATERAL: frozenset[str] = frozenset({"contempt"})

_CX = 56.0  # canonical face midline
_POSE_CENTRE = (56.0, 72.0)  # rotation / scale centre: the middle of the 5 template points


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Identity:
    """Appearance of one person; lengths in canonical (112-template) units, colours RGB [0, 1]."""

    face_w: float  # half width at the cheekbones
    face_top: float  # skull height above the widest line
    face_cy: float  # y of the widest line
    chin_y: float  # y of the chin with the jaw closed
    jaw: float  # 0 = pointed/oval jaw, 1 = square jaw
    skin: tuple[float, float, float]
    hair_style: int  # 0 bald, 1 short, 2 fringe, 3 long, 4 curly volume, 5 side-swept
    hair: tuple[float, float, float]
    hairline: float  # y of the hairline at the midline
    hair_volume: float
    eye_hw: float  # half width of the eye opening
    eye_open: float  # upper lid height above the eye centre
    eye_low: float  # lower lid depth below the eye centre
    eye_tilt: float  # outer corners up (+) or down (-)
    iris_r: float
    iris: tuple[float, float, float]
    brow_thick: float
    brow_dy: float  # brow height offset
    brow_arch: float
    brow_len: float
    brow: tuple[float, float, float]
    nose_w: float  # half spread of the nostril wings
    lip_up: float  # upper lip thickness at the centre
    lip_low: float  # lower lip thickness at the centre
    lips: tuple[float, float, float]
    beard: int  # 0 none, 1 stubble, 2 full, 3 goatee, 4 moustache
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_colour: tuple[float, float, float]
    age: float  # 0 young .. 1 old: wrinkle and line strength
    ear_r: float
    clothes: tuple[float, float, float]
    blush: float


@dataclass(frozen=True)
class Scene:
    """Pose, light, background and noise of one picture (shared by a face and its poker face).

    ``shift`` is in canonical units; ``yaw`` in [-1, 1] squashes the face horizontally and
    slides the inner features sideways, a cheap stand-in for a small head turn.
    """

    rotation_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    yaw: float = 0.0
    light_angle: float = 0.0  # direction the light comes from, radians in the image plane
    light_strength: float = 0.0  # relative brightness change across the face
    brightness: float = 1.0
    background: int = 0  # 0 flat, 1 linear gradient, 2 blotchy noise texture
    bg_colours: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (0.55, 0.58, 0.62),
        (0.35, 0.37, 0.42),
    )
    bg_angle: float = 0.0
    bg_grain: float = 0.0  # fine per-pixel texture amplitude
    noise_sigma: float = 0.0  # sensor noise std in [0, 1] units
    seed: int = 0  # seeds background texture and sensor noise, so both renders share them


@dataclass(frozen=True)
class Render:
    """One rendered picture.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB.
        landmarks: ``(5, 2)`` float64 pixel ``(x, y)``: left eye, right eye, nose tip,
            left and right mouth corner (the mouth corners follow the expression).
        box: ``(4,)`` float64 ``x0, y0, x1, y1`` pixel box of the face (forehead to chin,
            cheek to cheek), after pose.
        geometry: named feature points in canonical units *before pose* (for tests and
            analysis), see ``face_geometry``.
    """

    image: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    geometry: dict[str, np.ndarray] = field(repr=False)


def action_units(
    both: Mapping[int, float] | None = None,
    *,
    left: Mapping[int, float] | None = None,
    right: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Build a ``(2, 14)`` float64 AU array from ``{au_code: intensity}`` mappings.

    ``both`` sets both halves of the face, ``left`` / ``right`` add to one half (image
    left / right). Values are clipped to [0, 1]; unknown codes raise ``KeyError``.
    """
    aus = np.zeros((2, len(AU_CODES)), dtype=np.float64)
    for side, mapping in ((slice(None), both), (0, left), (1, right)):
        for code, value in (mapping or {}).items():
            aus[side, _AU_INDEX[code]] += value
    return np.clip(aus, 0.0, 1.0)


def prototype_aus(emotion: str, intensity: float = 1.0, side: int = 1) -> np.ndarray:
    """``(2, 14)`` AUs of an emotion's EMFACS prototype at ``intensity``.

    ``side`` (0 image-left, 1 image-right) picks the active half of unilateral prototypes.
    """
    weights = {code: w * intensity for code, w in PROTOTYPES[emotion].items()}
    if emotion in UNILATERAL:
        return action_units(left=weights) if side == 0 else action_units(right=weights)
    return action_units(weights)


# --------------------------------------------------------------------------- sampling

_SKIN_RAMP = np.array(
    [[0.98, 0.84, 0.74], [0.91, 0.72, 0.58], [0.76, 0.54, 0.38], [0.55, 0.36, 0.24], [0.30, 0.19, 0.13]],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05], [0.16, 0.10, 0.07], [0.33, 0.21, 0.12], [0.52, 0.36, 0.20],
        [0.83, 0.69, 0.42], [0.58, 0.24, 0.10], [0.55, 0.55, 0.55], [0.86, 0.85, 0.83],
        [0.25, 0.18, 0.40],
    ],
    dtype=np.float64,
)
_HAIR_P = np.array([0.24, 0.20, 0.15, 0.09, 0.11, 0.07, 0.06, 0.04, 0.04])
_IRIS_COLOURS = np.array(
    [[0.22, 0.12, 0.06], [0.38, 0.22, 0.10], [0.45, 0.40, 0.18], [0.25, 0.45, 0.30],
     [0.25, 0.45, 0.70], [0.45, 0.52, 0.58]],
    dtype=np.float64,
)


def _tup(c: np.ndarray) -> tuple[float, float, float]:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity; wide ranges on purpose so that identity varies far more than expression."""
    u = rng.uniform(0.0, len(_SKIN_RAMP) - 1.0)
    i = min(int(u), len(_SKIN_RAMP) - 2)
    skin = _SKIN_RAMP[i] * (1 - (u - i)) + _SKIN_RAMP[i + 1] * (u - i)
    skin = skin * rng.uniform(0.93, 1.05) + rng.normal(0.0, 0.02, 3)
    age = float(rng.beta(1.3, 2.5))
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_P)]
    if age > 0.65 and rng.uniform() < 0.6:  # greying with age
        hair = hair * 0.4 + np.array([0.72, 0.71, 0.70]) * 0.6
    hair = hair * rng.uniform(0.85, 1.15)
    brow = hair * 0.75 if hair.mean() < 0.5 else hair * 0.55
    lips = skin * np.array([0.86, 0.58, 0.58]) + np.array([0.06, 0.0, 0.02])
    if rng.uniform() < 0.2:  # lipstick
        lips = np.array([0.62, 0.10, 0.18]) * rng.uniform(0.7, 1.1)
    style = int(rng.choice(6, p=[0.08, 0.28, 0.18, 0.22, 0.10, 0.14]))
    beard = int(rng.choice(5, p=[0.62, 0.12, 0.12, 0.07, 0.07]))
    return Identity(
        face_w=float(rng.uniform(36.5, 43.5)),
        face_top=float(rng.uniform(58.0, 66.0)),
        face_cy=float(rng.uniform(52.0, 60.0)),
        chin_y=float(rng.uniform(106.0, 116.0)),
        jaw=float(rng.uniform(0.0, 1.0)),
        skin=_tup(skin),
        hair_style=style,
        hair=_tup(hair),
        hairline=float(rng.uniform(14.0, 24.0)) if style != 2 else float(rng.uniform(29.0, 35.0)),
        hair_volume=float(rng.uniform(2.0, 6.0)) if style != 4 else float(rng.uniform(8.0, 13.0)),
        eye_hw=float(rng.uniform(7.0, 8.6)),
        eye_open=float(rng.uniform(3.0, 4.4)),
        eye_low=float(rng.uniform(2.0, 2.9)),
        eye_tilt=float(rng.uniform(-0.8, 1.2)),
        iris_r=float(rng.uniform(3.2, 3.9)),
        iris=_tup(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.8, 1.2)),
        brow_thick=float(rng.uniform(1.6, 3.6)),
        brow_dy=float(rng.uniform(-1.5, 1.5)),
        brow_arch=float(rng.uniform(0.8, 3.0)),
        brow_len=float(rng.uniform(18.0, 23.0)),
        brow=_tup(brow),
        nose_w=float(rng.uniform(6.5, 10.0)),
        lip_up=float(rng.uniform(2.2, 4.2)),
        lip_low=float(rng.uniform(3.2, 6.0)),
        lips=_tup(lips),
        beard=beard,
        glasses=int(rng.choice(3, p=[0.72, 0.14, 0.14])),
        glasses_colour=_tup(rng.uniform(0.0, 0.6, 3) * (rng.uniform() < 0.6) + rng.uniform(0.0, 0.12)),
        age=age,
        ear_r=float(rng.uniform(3.5, 5.0)),
        clothes=_tup(rng.uniform(0.05, 0.9, 3)),
        blush=float(rng.uniform(0.0, 0.25)),
    )


@functools.lru_cache(maxsize=65536)
def identity_from_id(identity_id: int) -> Identity:
    """The identity with this id: a pure function of the id (same id, same person, everywhere)."""
    return random_identity(np.random.default_rng([0x1D_FACE, int(identity_id)]))


def random_scene(rng: np.random.Generator) -> Scene:
    """Small pose, light, background and sensor noise variation."""
    c0 = rng.uniform(0.05, 0.95, 3)
    c1 = np.clip(c0 + rng.normal(0.0, 0.25, 3), 0.0, 1.0)
    return Scene(
        rotation_deg=float(rng.uniform(-8.0, 8.0)),
        scale=float(rng.uniform(0.94, 1.06)),
        shift=(float(rng.uniform(-2.5, 2.5)), float(rng.uniform(-2.5, 2.5))),
        yaw=float(rng.uniform(-0.6, 0.6)),
        light_angle=float(rng.uniform(-math.pi, math.pi)),
        light_strength=float(rng.uniform(0.0, 0.35)),
        brightness=float(rng.uniform(0.75, 1.15)),
        background=int(rng.integers(3)),
        bg_colours=(_tup(c0), _tup(c1)),
        bg_angle=float(rng.uniform(0.0, 2 * math.pi)),
        bg_grain=float(rng.uniform(0.0, 0.05)),
        noise_sigma=float(rng.uniform(0.0, 0.03)),
        seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------- geometry


def _au(aus: np.ndarray, code: int, side: int) -> float:
    return float(aus[side, _AU_INDEX[code]])


def _au_mid(aus: np.ndarray, code: int) -> float:
    return float(aus[:, _AU_INDEX[code]].mean())


def face_geometry(identity: Identity, aus: np.ndarray) -> dict[str, np.ndarray]:
    """Feature geometry in canonical units (before pose) for an identity and ``(2, 14)`` AUs.

    Keys (points are ``(x, y)``, per-side arrays are ``(2, ...)`` image-left first):
    ``eyes (2, 2)``, ``nose_tip (2,)``, ``mouth_corners (2, 2)``, ``brow_inner``,
    ``brow_mid``, ``brow_outer (2, 2)``, ``lid_upper``, ``lid_lower (2,)`` (lid heights),
    ``lip_top``, ``open_top``, ``open_bottom``, ``lip_bottom (1,)`` (mouth centre y values),
    ``chin (1,)``, ``nostril_lift (1,)``.
    """
    aus = np.asarray(aus, dtype=np.float64).reshape(2, len(AU_CODES))
    t = TEMPLATE_112
    eyes = t[:2].copy()
    corners = t[3:5].copy()
    brow_in, brow_mid, brow_out = np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))
    lid_up, lid_low = np.zeros(2), np.zeros(2)
    for s in (0, 1):
        a = {code: _au(aus, code, s) for code in AU_CODES}
        out = -1.0 if s == 0 else 1.0  # direction away from the midline
        ex, ey = eyes[s]
        base = ey - 11.5 + identity.brow_dy
        # brows: AU1 lifts the inner end, AU2 the outer, AU4 pulls down and together
        brow_in[s] = (
            ex - out * (8.0 - 2.5 * a[4] - 0.8 * a[9]),
            base + 1.0 - 7.0 * a[1] + 4.0 * a[4] + 2.0 * a[9],
        )
        brow_mid[s] = (
            ex + out * (identity.brow_len * 0.5 - 8.0),
            base - identity.brow_arch - 2.8 * a[1] - 3.5 * a[2] + 2.8 * a[4] + 1.2 * a[9],
        )
        brow_out[s] = (
            ex + out * (identity.brow_len - 8.0),
            base + 0.5 - 6.0 * a[2] + 1.0 * a[4] - 0.5 * a[1],
        )
        lid_up[s] = max(identity.eye_open + 3.0 * a[5] - 1.3 * a[7] - 0.9 * a[6] - 0.6 * a[4] - 0.4 * a[9], 0.5)
        lid_low[s] = max(identity.eye_low - 1.4 * a[7] - 1.3 * a[6], 0.4)
        # lip corners: AU12 up and out, AU14 in and tight, AU15 down, AU20 sideways, AU26 in and down
        dx_out = 3.5 * a[12] - 1.2 * a[14] + 0.6 * a[15] + 4.5 * a[20] - 1.5 * a[23] - 2.0 * a[26]
        dy = -5.5 * a[12] - 1.2 * a[14] + 5.0 * a[15] + 1.2 * a[20] + 3.0 * a[26] + 0.8 * a[16]
        corners[s] = corners[s] + (out * dx_out, dy)
    a = {code: _au_mid(aus, code) for code in AU_CODES}
    smile = max(max(_au(aus, 12, 0), _au(aus, 12, 1)) - 0.35, 0.0) / 0.65 * min(_au(aus, 12, 0), _au(aus, 12, 1))
    mid_y = float(t[3:5, 1].mean()) + 0.5
    # upper lip: AU9 raises it (disgust's snarl), a broad smile parts the lips over the teeth
    open_top = mid_y - 2.8 * a[9] - 1.2 * smile - 0.8 * a[26] - 0.6 * a[20]
    open_bottom = mid_y + 10.0 * a[26] + 3.0 * a[16] + 2.5 * smile + 1.5 * a[20] + 0.8 * a[9]
    thin = 1.0 - 0.55 * a[23] - 0.25 * a[20] - 0.2 * max(_au(aus, 12, 0), _au(aus, 12, 1)) - 0.2 * a[14]
    lip_top = open_top - identity.lip_up * thin - 1.0 * a[9]
    lip_bottom = open_bottom + identity.lip_low * thin + 1.2 * a[16]
    chin = identity.chin_y + 8.0 * a[26] + 1.5 * a[16]
    return {
        "eyes": eyes,
        "nose_tip": t[2].copy(),
        "mouth_corners": corners,
        "brow_inner": brow_in,
        "brow_mid": brow_mid,
        "brow_outer": brow_out,
        "lid_upper": lid_up,
        "lid_lower": lid_low,
        "lip_top": np.array([lip_top]),
        "open_top": np.array([open_top]),
        "open_bottom": np.array([open_bottom]),
        "lip_bottom": np.array([lip_bottom]),
        "chin": np.array([chin]),
        "nostril_lift": np.array([2.0 * a[9]]),
    }


# --------------------------------------------------------------------------- drawing


def _grids(ip: list[float], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(x, y)`` of every pixel centre, two ``(h, w)`` float32 arrays (``ip``: inverse matrix)."""
    cols = np.arange(w, dtype=np.float32)[None, :]
    rows = np.arange(h, dtype=np.float32)[:, None]
    return cols * ip[0] + (rows * ip[1] + ip[2]), cols * ip[3] + (rows * ip[4] + ip[5])


class _Window:
    """A pixel window of the canvas with the canonical coordinates of its pixels."""

    __slots__ = ("rs", "cs", "x", "y")

    def __init__(self, rs: slice, cs: slice, x: np.ndarray, y: np.ndarray) -> None:
        self.rs, self.cs, self.x, self.y = rs, cs, x, y  # x, y: (h, w) float32 canonical


class _Canvas:
    """A float32 ``(H, W, 3)`` RGB image plus the canonical -> pixel affine matrix."""

    def __init__(self, image: np.ndarray, matrix: np.ndarray, grids: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> None:
        self.img = image
        self.h, self.w = image.shape[:2]
        self.m = np.asarray(matrix, dtype=np.float64)
        self.inv = invert_affine(self.m)
        self.mp = [float(v) for v in self.m.ravel()]  # plain floats keep float32 arrays float32
        self.ip = [float(v) for v in self.inv.ravel()]
        # canonical units per pixel; 1/px is the slope of the one-pixel coverage ramp
        self.k = float(math.sqrt(abs(np.linalg.det(self.m[:, :2]))))
        # canonical x, y of every pixel, (h, w) float32 each; windows slice views of them
        self.gx, self.gy = grids if grids is not None else _grids(self.ip, self.h, self.w)

    def window(self, x0: float, y0: float, x1: float, y1: float, dx: float = 0.0) -> _Window | None:
        """Pixels covering the canonical box, with canonical coords shifted by ``-dx`` (yaw offsets)."""
        m = self.mp
        xa, xb = x0 + dx, x1 + dx
        # pixel position of the 4 box corners, in plain floats: this runs ~40 times per face
        px = (m[0] * xa + m[1] * y0, m[0] * xb + m[1] * y0, m[0] * xa + m[1] * y1, m[0] * xb + m[1] * y1)
        py = (m[3] * xa + m[4] * y0, m[3] * xb + m[4] * y0, m[3] * xa + m[4] * y1, m[3] * xb + m[4] * y1)
        c0 = max(int(math.floor(min(px) + m[2])) - 1, 0)
        c1 = min(int(math.ceil(max(px) + m[2])) + 2, self.w)
        r0 = max(int(math.floor(min(py) + m[5])) - 1, 0)
        r1 = min(int(math.ceil(max(py) + m[5])) + 2, self.h)
        if c0 >= c1 or r0 >= r1:
            return None
        x = self.gx[r0:r1, c0:c1]
        if dx != 0.0:
            x = x - dx
        return _Window(slice(r0, r1), slice(c0, c1), x, self.gy[r0:r1, c0:c1])

    def cover(self, d: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage of a signed distance (canonical units, negative inside)."""
        return _clip01(0.5 - d * self.k)

    def paint(self, win: _Window, alpha: np.ndarray, colour: np.ndarray | tuple[float, float, float]) -> None:
        sub = self.img[win.rs, win.cs]
        sub += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - sub)


def _clip01(a: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (two ufuncs; ``np.clip``'s Python wrapper costs more than the work here)."""
    np.maximum(a, 0.0, out=a)
    return np.minimum(a, 1.0, out=a)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft falloff for shadows and lines: 1 inside, 0 beyond ``width`` outside."""
    return _clip01(0.5 - d * (1.0 / width))


def _seg_dist(x: np.ndarray, y: np.ndarray, ax: float, ay: float, bx: float, by: float) -> np.ndarray:
    """Distance from each point to the segment a-b (plain-float endpoints keep float32 arrays float32)."""
    vx, vy = bx - ax, by - ay
    px, py = x - ax, y - ay
    t = _clip01((px * vx + py * vy) * (1.0 / max(vx * vx + vy * vy, 1e-9)))
    return np.hypot(px - t * vx, py - t * vy)


def _stroke(cv: _Canvas, lines: list[list[tuple[float, float]]], width: float, colour: np.ndarray,
            alpha: float, dx: float = 0.0) -> None:
    """Soft lines of ``width`` along polylines (one window for all), painted at opacity ``alpha``."""
    if alpha <= 0.01:
        return
    pad = width + 1.0
    xs = [p[0] for line in lines for p in line]
    ys = [p[1] for line in lines for p in line]
    win = cv.window(min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad, dx)
    if win is None:
        return
    d = None
    for line in lines:
        for (ax, ay), (bx, by) in zip(line[:-1], line[1:]):
            ds = _seg_dist(win.x, win.y, ax, ay, bx, by)
            d = ds if d is None else np.minimum(d, ds)
    # thin lines keep a soft profile of their own width even at large sizes
    a = _clip01(0.5 - (d - 0.5 * width) * min(cv.k, 2.0 / max(width, 1e-3)))
    a *= alpha
    cv.paint(win, a, colour)


def _curves(cv: _Canvas, curves: list[tuple[tuple[float, float], ...]], width: float, colour: np.ndarray,
            alpha: float, dx: float = 0.0, alpha_x: tuple[float, float, float] | None = None,
            vertical: bool = False) -> None:
    """Soft lines along mostly horizontal parabolas ``y(x)``, each through 3 points (end, middle, end).

    The vertical distance stands in for the true one: ~4x cheaper than segments and exact
    enough for creases whose slope stays small. ``vertical=True`` swaps the axes (``x(y)``
    curves, for folds that run downwards). ``alpha_x = (centre_alpha, outer_alpha, half_width)``
    instead varies the opacity with the distance from the face midline (forehead lines: AU1
    acts in the middle, AU2 at the sides).
    """
    if alpha_x is None and alpha <= 0.01:
        return
    pad = width + 1.0
    xs = [p[0] for c in curves for p in c]
    ys = [p[1] for c in curves for p in c]
    win = cv.window(min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad, dx)
    if win is None:
        return
    x, y = (win.y, win.x) if vertical else (win.x, win.y)
    d = None
    for pts in curves:
        (x0, y0), (x1, y1), (x2, y2) = ((p[1], p[0]) for p in pts) if vertical else pts
        # Newton form of the parabola through the three points
        c1 = (y1 - y0) / (x1 - x0)
        c2 = ((y2 - y1) / (x2 - x1) - c1) / (x2 - x0)
        dc = np.abs(y - (y0 + (x - x0) * (c1 + c2 * (x - x1))))
        lo, hi = min(x0, x2), max(x0, x2)
        dc = np.maximum(dc, np.maximum(lo - x, x - hi))
        d = dc if d is None else np.minimum(d, dc)
    a = _clip01(0.5 - (d - 0.5 * width) * min(cv.k, 2.0 / max(width, 1e-3)))
    if alpha_x is not None:
        ca, oa, hw = alpha_x
        f = _clip01(np.abs(win.x - _CX) * (1.0 / hw) - 0.5)
        a *= ca + (oa - ca) * f
    else:
        a *= alpha
    cv.paint(win, a, colour)


def _ellipse(cv: _Canvas, cx: float, cy: float, rx: float, ry: float, colour, alpha: float = 1.0,
             soft: float = 0.0, dx: float = 0.0) -> None:
    """Filled ellipse; ``soft`` > 0 blurs its edge over that many canonical units."""
    if alpha <= 0.005:
        return
    pad = soft + 1.0
    win = cv.window(cx - rx - pad, cy - ry - pad, cx + rx + pad, cy + ry + pad, dx)
    if win is None:
        return
    r = np.hypot((win.x - cx) * (1.0 / rx), (win.y - cy) * (1.0 / ry))
    d = (r - 1.0) * min(rx, ry)
    a = _soft(d, soft) if soft > 0 else cv.cover(d)
    if alpha < 1.0:
        a *= alpha
    cv.paint(win, a, colour)


def _background(scene: Scene, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32 background: flat, linear gradient, or blotchy value noise."""
    c0 = np.asarray(scene.bg_colours[0], dtype=np.float32)
    c1 = np.asarray(scene.bg_colours[1], dtype=np.float32)
    rng = np.random.default_rng([scene.seed, 1])
    if scene.background == 1:
        ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
        t = xs * np.float32(math.cos(scene.bg_angle)) + ys * np.float32(math.sin(scene.bg_angle)) + 0.5
        img = c0 + t[..., None] * (c1 - c0)
    elif scene.background == 2:
        g = 5
        grid = rng.uniform(0.0, 1.0, (g, g, 1)).astype(np.float32)
        grid = c0 + grid * (c1 - c0)  # (g, g, 3)
        ay = np.maximum(0.0, 1.0 - np.abs(np.linspace(0, g - 1, h, dtype=np.float32)[:, None] - np.arange(g)))
        ax = np.maximum(0.0, 1.0 - np.abs(np.linspace(0, g - 1, w, dtype=np.float32)[:, None] - np.arange(g)))
        img = np.einsum("hi,ijc,wj->hwc", ay, grid, ax, optimize=True).astype(np.float32)
    else:
        img = np.broadcast_to(c0, (h, w, 3)).copy()
    if scene.bg_grain > 0:
        grain = rng.random((h, w, 1), dtype=np.float32)
        grain -= 0.5
        grain *= scene.bg_grain * math.sqrt(12.0)  # uniform grain with std bg_grain
        img += grain
    return img


def _hair_sdf(x: np.ndarray, y: np.ndarray, idn: Identity) -> np.ndarray:
    """Signed distance of the hair mass above and beside the face (front layer)."""
    fw, vol = idn.face_w, idn.hair_volume
    top = idn.face_cy - idn.face_top
    ax, ay = fw + vol, idn.face_cy - top + vol
    dxm = x - _CX
    r = np.hypot(dxm / ax, (y - idn.face_cy) / ay)
    d_skull = (r - 1.0) * ax
    if idn.hair_style == 4:  # curly: a bumpy outline
        d_skull = d_skull - 1.8 * np.sin(9.0 * np.arctan2(y - idn.face_cy, dxm))
    style = idn.hair_style
    if style == 2:  # straight fringe with a slight wave
        line = idn.hairline + 0.004 * dxm * dxm + 0.6 * np.sin(dxm * 0.9)
        side_len, inset = 64.0, 2.5
    elif style == 5:  # swept to one side: the hairline slopes
        line = idn.hairline + 0.010 * dxm * dxm + 0.25 * dxm + 6.0
        side_len, inset = 56.0, 2.0
    elif style == 3:  # long: centre parting, locks down the sides
        line = idn.hairline + 0.016 * dxm * dxm - 3.0 + 4.0 * np.exp(-dxm * dxm / 8.0)
        side_len, inset = 98.0, 3.5
    else:
        line = idn.hairline + 0.012 * dxm * dxm
        side_len, inset = (50.0, 1.5) if style == 1 else (58.0, 2.0)
    d_line = y - line
    d_side = np.maximum(fw - inset - np.abs(dxm), y - side_len)
    return np.maximum(d_skull, np.minimum(d_line, d_side))


def _face_sdf(x: np.ndarray, y: np.ndarray, idn: Identity, chin: float) -> np.ndarray:
    """Signed distance (approximate) of the face outline: an oval skull over a jaw whose
    squareness is ``idn.jaw``; ``chin`` moves with the jaw drop."""
    u = np.abs(x - _CX) / idn.face_w
    dy = y - idn.face_cy
    upper = np.hypot(u, dy / idn.face_top)
    p = 2.0 + 1.8 * idn.jaw
    v = np.maximum(dy, 0.0) / (chin - idn.face_cy)
    lower = (u**p + v**p) ** (1.0 / p)
    r = np.where(dy < 0, upper, lower)
    return (r - 1.0) * idn.face_w


def _mouth(cv: _Canvas, idn: Identity, g: dict[str, np.ndarray], skin: np.ndarray, dx: float) -> None:
    """Lips, mouth opening, teeth and the mouth line, all bounded by the two corners."""
    (xl, yl), (xr, yr) = g["mouth_corners"].tolist()
    xm, hw = 0.5 * (xl + xr), 0.5 * (xr - xl)
    lip_top, open_top = float(g["lip_top"][0]), float(g["open_top"][0])
    open_bot, lip_bot = float(g["open_bottom"][0]), float(g["lip_bottom"][0])
    win = cv.window(xl - 2, min(lip_top, yl, yr) - 2, xr + 2, max(lip_bot, yl, yr) + 2, dx)
    if win is None:
        return
    t = np.minimum(np.maximum((win.x - xm) * (1.0 / hw), -1.0), 1.0)
    s = 1.0 - t * t
    base = (yl + 0.5 * (yr - yl)) + t * (0.5 * (yr - yl))  # straight line corner to corner
    y0 = 0.5 * (yl + yr)
    sr = np.sqrt(s)  # full lips: rounder towards the corners than a parabola
    at = np.abs(t) - 0.22
    bow = 0.9 * np.exp(at * at * (-1.0 / 0.14**2)) - 0.3  # cupid's bow peaks
    top = base + sr * ((lip_top - y0) - bow)
    bot = base + sr * (lip_bot - y0)
    o_top = base + s * (open_top - y0)
    o_bot = base + s * (open_bot - y0)
    outside = np.abs(win.x - xm) - hw
    lips_a = cv.cover(np.maximum(np.maximum(top - win.y, win.y - bot), outside))
    lip = np.asarray(idn.lips, dtype=np.float32)
    # lower lip a little lighter than the upper one: light from above
    lip_col = np.where((win.y > o_bot)[..., None], lip * np.float32(1.08), lip * np.float32(0.92))
    cv.paint(win, lips_a, lip_col)
    if open_bot - open_top > 0.3:
        inner = cv.cover(np.maximum(np.maximum(o_top - win.y, win.y - o_bot), outside + 0.5))
        teeth_line = o_top + np.minimum(3.2, 0.8 * (o_bot - o_top))
        inside = np.where((win.y < teeth_line)[..., None], np.float32([0.93, 0.91, 0.85]),
                          np.float32([0.28, 0.07, 0.08]))
        cv.paint(win, inner, inside)
    # the line between the lips, darkest at the corners
    mid = 0.5 * (o_top + o_bot)
    line_a = _clip01(0.5 - (np.abs(win.y - mid) - 0.45) * min(cv.k, 2.0)) * (outside < 0.8)
    cv.paint(win, line_a * 0.85, skin * np.float32(0.28))


def _base(idn: Identity, scene: Scene, matrix: np.ndarray, grids: tuple[np.ndarray, np.ndarray], h: int, w: int
          ) -> np.ndarray:
    """Background and the layers behind the face that never move with the expression
    (long hair, clothes, neck, ears): ``(h, w, 3)`` float32, shared by a face and its poker face."""
    cv = _Canvas(_background(scene, h, w), matrix, grids)
    skin = np.asarray(idn.skin, dtype=np.float32)
    hair = np.asarray(idn.hair, dtype=np.float32)
    fw, cy = idn.face_w, idn.face_cy
    # back layers: long hair, clothes, neck, ears (none of them move with the expression)
    if idn.hair_style == 3:
        win = cv.window(_CX - fw - 12, cy - 10, _CX + fw + 12, 150)
        if win is not None:
            d = np.maximum(np.abs(win.x - _CX) - (fw + idn.hair_volume + 1.0) - 0.06 * (win.y - cy),
                           np.maximum(win.y - 138.0, (cy - 8) - win.y))
            cv.paint(win, cv.cover(d), hair * np.float32(0.8))
    _ellipse(cv, _CX, idn.chin_y + 42.0, fw * 1.9, 30.0, idn.clothes)
    win = cv.window(_CX - fw, cy, _CX + fw, idn.chin_y + 40)
    if win is not None:
        d = np.maximum(np.abs(win.x - _CX) - fw * 0.62, np.maximum(cy - win.y, win.y - (idn.chin_y + 30.0)))
        shade = _clip01((win.y - idn.chin_y) * (1.0 / 14.0))[..., None]  # shadow under the chin
        cv.paint(win, cv.cover(d), skin * (0.62 + 0.2 * shade))
    ear_y = 60.6
    for s in (-1.0, 1.0):
        ex = _CX + s * (fw - 0.5) - 2.0 * scene.yaw
        _ellipse(cv, ex, ear_y, idn.ear_r, idn.ear_r * 2.1, skin * np.float32(0.88))
        _ellipse(cv, ex + s * 0.8, ear_y, idn.ear_r * 0.45, idn.ear_r * 1.3, skin * np.float32(0.68), alpha=0.7,
                 soft=1.0)
    return cv.img


def _noise(scene: Scene, h: int, w: int) -> np.ndarray | None:
    """Sensor noise ``(h, w, 3)`` float32 in 0..255 units from the scene seed, None when the scene has none.

    Triangular (sum of two uniforms) with the scene's standard deviation: close enough to
    Gaussian for sensor grain and 2x cheaper to draw than ``standard_normal``.
    """
    if scene.noise_sigma <= 0:
        return None
    rng = np.random.default_rng([scene.seed, 2])
    noise = rng.random((h, w, 3), dtype=np.float32)
    noise += rng.random((h, w, 3), dtype=np.float32)
    noise -= 1.0
    noise *= scene.noise_sigma * math.sqrt(6.0) * 255.0
    return noise


def _render(idn: Identity, aus: np.ndarray, g: dict[str, np.ndarray], scene: Scene, base: np.ndarray,
            noise: np.ndarray | None, matrix: np.ndarray, grids: tuple[np.ndarray, np.ndarray],
            cache: dict[tuple, object]) -> np.ndarray:
    """Draw the face and its features over a copy of ``base`` with the canonical -> pixel ``matrix``.

    ``g`` is ``face_geometry(idn, aus)``. Geometry is pulled out as plain floats first: a
    ``np.float64`` scalar would silently promote every float32 pixel array to float64.
    ``cache`` holds the face-outline distances and the hair layer, shared between renders of
    one identity and scene.
    Returns the float32 ``(h, w, 3)`` image in 0..255 units (unclipped) after light, exposure and noise.
    """
    h, w = base.shape[:2]
    cv = _Canvas(base.copy(), matrix, grids)
    skin = np.asarray(idn.skin, dtype=np.float32)
    hair = np.asarray(idn.hair, dtype=np.float32)
    dark = skin * np.float32(0.55)
    wr = skin * np.float32(0.6)
    feat_dx = 3.5 * scene.yaw  # inner features slide with a head turn more than the outline
    nose_dx = 5.5 * scene.yaw
    fw, chin, cy = idn.face_w, float(g["chin"][0]), idn.face_cy
    al = aus.tolist()
    au = [{code: al[s][i] for i, code in enumerate(AU_CODES)} for s in (0, 1)]
    am = {code: 0.5 * (au[0][code] + au[1][code]) for code in AU_CODES}
    eyes = g["eyes"].tolist()
    corners = g["mouth_corners"].tolist()
    lid_up, lid_low = g["lid_upper"].tolist(), g["lid_lower"].tolist()

    # face with edge shading for roundness
    top = cy - idn.face_top
    def face_d(win: _Window) -> np.ndarray:
        # the outline only changes with the jaw, so a face and its poker face usually share it
        key = (chin, win.rs.start, win.rs.stop, win.cs.start, win.cs.stop)
        if key not in cache:
            cache[key] = _face_sdf(win.x, win.y, idn, chin)
        return cache[key]

    win = cv.window(_CX - fw, top, _CX + fw, chin)
    if win is not None:
        d = face_d(win)
        edge = _clip01(1.0 + d * (1.0 / 7.0))[..., None]  # 0 deep inside, 1 at the outline
        cv.paint(win, cv.cover(d), skin * (1.0 - 0.22 * edge * edge))

    # eye sockets and cheeks: soft shading before the sharp features
    for s in (0, 1):
        ex, ey = eyes[s]
        side = s * 2.0 - 1.0
        _ellipse(cv, ex, ey - 3.0, idn.eye_hw + 4.0, 6.5, dark, alpha=0.16, soft=4.0, dx=feat_dx)
        a6, a12 = au[s][6], au[s][12]
        cheek_y = ey + 15.0 - 3.5 * a6 - 2.0 * a12
        _ellipse(cv, ex + side * 2.0, cheek_y, 7.0, 5.5, np.float32([1.0, 0.6, 0.55]) * skin,
                 alpha=idn.blush + 0.25 * a6, soft=4.0, dx=feat_dx)
        if a6 + a12 > 0.05:  # the raised cheek casts a shadow under it
            _ellipse(cv, ex + side * 3.0, cheek_y + 7.0, 8.0, 2.5, dark, alpha=0.3 * max(a6, a12), soft=3.0,
                     dx=feat_dx)

    # forehead lines (age, AU1 in the middle, AU2 at the sides) and glabella lines (AU4)
    brow_base = 0.5 * (eyes[0][1] + eyes[1][1]) - 11.5 + idn.brow_dy
    f_inner = 0.75 * am[1] + 0.25 * idn.age
    f_outer = 0.75 * am[2] + 0.25 * idn.age
    if max(f_inner, f_outer) > 0.02:
        lines = []
        for k in range(3):
            yk = brow_base - 7.0 - 3.6 * k
            lines.append(((_CX - 16.0, yk + 1.5), (_CX, yk), (_CX + 16.0, yk + 1.5)))
        _curves(cv, lines, 0.9, wr, 1.0, feat_dx, alpha_x=(f_inner, f_outer, 10.0))
    if am[4] > 0.02:
        _curves(cv, [((_CX + s * 2.3, brow_base - 1.0), (_CX + s * 1.95, brow_base + 2.5),
                      (_CX + s * 1.6, brow_base + 6.0)) for s in (-1.0, 1.0)], 1.0, wr, 0.8 * am[4], feat_dx,
                vertical=True)

    # nasolabial folds (age, AU6/9/12) and the AU14 dimple
    for s in (0, 1):
        sign = s * 2.0 - 1.0
        cx, cyy = corners[s]
        depth = 0.12 + 0.3 * idn.age + 0.7 * max(au[s][12], au[s][9], 0.6 * au[s][6])
        p0 = (_CX + sign * (idn.nose_w + 2.0), 68.0 - 1.5 * au[s][9])
        p2 = (cx + sign * 3.5, cyy + 3.0)
        p1 = (p2[0] + sign * 1.6, 0.5 * (p0[1] + p2[1]))
        _curves(cv, [(p0, p1, p2)], 1.1, skin * np.float32(0.62), min(depth, 0.85), feat_dx, vertical=True)
        a14 = au[s][14]
        if a14 > 0.02:  # a short crease beside the tightened corner
            _curves(cv, [((cx + sign * 2.3, cyy - 2.5), (cx + sign * 3.0, cyy), (cx + sign * 2.3, cyy + 2.5))],
                    1.0, skin * np.float32(0.5), 0.85 * a14, feat_dx, vertical=True)

    # beard under the features
    if idn.beard in (1, 2):
        win = cv.window(_CX - fw, 50.0, _CX + fw, chin + 1)
        if win is not None:
            dxm = win.x - _CX
            # the beard line runs from the sideburns down to just above the mouth corners
            d = np.maximum(face_d(win), (84.0 - 0.022 * dxm * dxm) - win.y)
            if idn.beard == 1:  # stubble: a faint shadow, darker than the skin whatever the hair colour
                cv.paint(win, _soft(d, 8.0) * 0.2, np.minimum(hair, skin) * np.float32(0.6))
            else:
                cv.paint(win, _soft(d, 2.5) * 0.92, hair)
    elif idn.beard == 3:
        lb = float(g["lip_bottom"][0])  # between lower lip and chin, so it follows the jaw
        _ellipse(cv, _CX, 0.5 * (lb + chin) + 0.5, 7.5, max(0.5 * (chin - lb), 3.0), hair, alpha=0.92, dx=feat_dx)

    # nose: bridge shadow on the side away from the light, wings, nostrils, AU9 wrinkles
    tx, ty = g["nose_tip"].tolist()
    lift = float(g["nostril_lift"][0])
    shadow_side = -1.0 if math.cos(scene.light_angle) > 0 else 1.0
    _ellipse(cv, tx + shadow_side * 4.0, 62.0, 1.8, 9.0, dark, alpha=0.25, soft=2.5, dx=nose_dx)
    _ellipse(cv, tx, ty + 1.6, idn.nose_w * 0.6, 2.2, dark, alpha=0.2, soft=2.0, dx=nose_dx)
    wing = idn.nose_w * (1.0 + 0.12 * am[9])
    arcs = []
    for s in (-1.0, 1.0):
        c = (tx + s * wing * 0.78, ty - 1.0 - lift)
        arcs.append(((c[0], c[1] - 3.0), (c[0] + s * 1.9, c[1] - 0.2), (c[0] - s * 0.5, c[1] + 2.6)))
        _ellipse(cv, tx + s * wing * 0.42, ty + 1.1 - 0.6 * lift, 1.7 + 0.2 * am[9], 0.9, skin * np.float32(0.25),
                 dx=nose_dx)
    _curves(cv, arcs, 0.9, skin * np.float32(0.55), 0.65, nose_dx, vertical=True)
    _ellipse(cv, tx - shadow_side * 1.0, ty - 2.0, 2.0, 1.5, np.minimum(skin * 1.18, 1.0), alpha=0.5, soft=1.5,
             dx=nose_dx)
    if am[9] > 0.02:
        lines = [((tx - 4.0, 56.0 + 2.6 * k + 0.8), (tx, 56.0 + 2.6 * k), (tx + 4.0, 56.0 + 2.6 * k + 0.8))
                 for k in range(3)]
        _curves(cv, lines, 0.9, skin * np.float32(0.5), 0.85 * am[9], nose_dx)
        _stroke(cv, [[(tx + s * 4.5, 55.0), (tx + s * 6.5, 60.5)] for s in (-1.0, 1.0)],  # "bunny lines"
                0.9, skin * np.float32(0.55), 0.7 * am[9], nose_dx)

    # mouth, then moustache over the upper lip edge, then the chin crease under the lower lip
    _mouth(cv, idn, g, skin, feat_dx)
    if idn.beard in (2, 4):
        (xl, yl), (xr, yr) = corners
        lt = float(g["lip_top"][0])
        _stroke(cv, [[(xl - 1.0, yl + 1.0), (_CX - 5, lt - 0.6), (_CX + 5, lt - 0.6), (xr + 1.0, yr + 1.0)]],
                3.2, hair, 0.95, feat_dx)
    lb = float(g["lip_bottom"][0])
    _curves(cv, [((_CX - 5, lb + 3.0), (_CX, lb + 2.2), (_CX + 5, lb + 3.0))], 1.4, dark, 0.25, feat_dx)

    # eyes
    lash = np.float32([0.07, 0.05, 0.05])
    white = np.float32([0.93, 0.92, 0.9])
    iris = np.asarray(idn.iris, dtype=np.float32)
    hw, ir = idn.eye_hw, idn.iris_r
    for s in (0, 1):
        ex, ey = eyes[s]
        out = s * 2.0 - 1.0
        hu, hl = lid_up[s], lid_low[s]
        win = cv.window(ex - hw - 1, ey - hu - 2.5, ex + hw + 1, ey + hl + 1.5, feat_dx)
        if win is None:
            continue
        u = (win.x - ex) * (1.0 / hw)
        s2 = np.maximum(1.0 - u * u, 0.0)
        yc = ey - (idn.eye_tilt * out) * u
        y_up = yc - hu * s2 * (1.0 + (0.25 * out) * u)  # lid peak slightly towards the nose side
        y_lo = yc + hl * s2
        beyond = np.abs(u) * hw - hw
        a_eye = cv.cover(np.maximum(np.maximum(y_up - win.y, win.y - y_lo), beyond))
        cv.paint(win, a_eye, white)
        r_iris = np.hypot(win.x - ex, win.y - (ey + 0.3))
        cv.paint(win, cv.cover(r_iris - ir) * a_eye, iris)
        cv.paint(win, cv.cover(r_iris - 0.45 * ir) * a_eye, lash)
        d_glint = np.hypot(win.x - (ex - 1.1), win.y - (ey - 1.0)) - 0.75
        cv.paint(win, cv.cover(d_glint) * a_eye, np.float32([1.0, 1.0, 1.0]))
        lash_w = 0.55 + 0.5 * _clip01(u * out)  # thicker towards the outer corner
        cv.paint(win, cv.cover(np.maximum(np.abs(win.y - y_up + 0.2) - lash_w, beyond - 0.5)), lash)
        cv.paint(win, cv.cover(np.maximum(np.abs(win.y - y_lo) - 0.3, beyond)) * 0.5, dark)
        # lid crease (higher when the lid is raised), under-eye furrow (AU6/AU7)
        crease = ((ex - out * hw * 0.8, ey - 1.0), (ex, ey - hu - 1.8 - 0.6 * au[s][5]),
                  (ex + out * hw * 0.95, ey - 1.5))
        _curves(cv, [crease], 0.8, dark, 0.45, feat_dx)
        squint = max(au[s][6], au[s][7])
        under = ((ex - out * hw * 0.7, ey + hl + 1.2), (ex, ey + hl + 2.4), (ex + out * hw * 0.9, ey + hl + 1.2))
        _curves(cv, [under], 0.9, dark, 0.15 + 0.25 * idn.age + 0.5 * squint, feat_dx)
        crow = 0.3 * idn.age + 0.75 * au[s][6]  # crow's feet at the outer corner
        if crow > 0.03:
            ox = ex + out * (hw + 1.5)
            _stroke(cv, [[(ox, ey + 0.3 * k), (ox + out * 3.5, ey + 2.0 * k)] for k in (-1.0, 1.0)], 0.7, dark,
                    crow, feat_dx)

    # brows: a tapered stroke through inner, middle and outer points
    brow = np.asarray(idn.brow, dtype=np.float32)
    bi, bm, bo = g["brow_inner"].tolist(), g["brow_mid"].tolist(), g["brow_outer"].tolist()
    for s in (0, 1):
        (ix, iy), (mx, my), (ox, oy) = bi[s], bm[s], bo[s]
        x0, x1 = min(ix, ox), max(ix, ox)
        win = cv.window(x0 - 1, min(iy, my, oy) - idn.brow_thick - 1, x1 + 1, max(iy, my, oy) + idn.brow_thick + 1,
                        feat_dx)
        if win is None:
            continue
        x = win.x
        xi, xmid, xo = x - ix, x - mx, x - ox
        # quadratic through the three points (Lagrange form)
        yb = (xmid * xo) * (iy / ((ix - mx) * (ix - ox))) + (xi * xo) * (my / ((mx - ix) * (mx - ox))) \
            + (xi * xmid) * (oy / ((ox - ix) * (ox - mx)))
        f = _clip01(xi * (1.0 / (ox - ix)))  # 0 at the inner end, 1 at the outer
        half = (0.5 * idn.brow_thick) * (1.0 - 0.55 * f * f)
        d = np.maximum(np.abs(win.y - yb) - half, np.maximum(x0 - x, x - x1))
        cv.paint(win, cv.cover(d) * 0.95, brow)

    # hair in front of the forehead
    if idn.hair_style != 0:
        win = cv.window(_CX - fw - 14, top - idn.hair_volume - 4, _CX + fw + 14, 100.0)
        if win is not None:
            key = ("hair", win.rs.start, win.rs.stop, win.cs.start, win.cs.stop)
            if key not in cache:  # the hair never moves with the expression: draw it once per pair
                d = _hair_sdf(win.x, win.y, idn)
                sheen = _clip01(1.0 + d * 0.1)[..., None]  # a little lighter towards the edges
                cache[key] = (cv.cover(d), hair * (0.8 + 0.25 * sheen))
            cv.paint(win, *cache[key])

    # glasses
    if idn.glasses:
        gc = np.asarray(idn.glasses_colour, dtype=np.float32)
        for s in (0, 1):
            ex, ey = eyes[s]
            win = cv.window(ex - 12.5, ey - 10.5, ex + 12.5, ey + 10.5, feat_dx)
            if win is None:
                continue
            if idn.glasses == 1:
                d = np.abs(np.hypot(win.x - ex, win.y - ey) - 10.0)
            else:  # rounded rectangle
                qx = np.abs(win.x - ex) - 8.5
                qy = np.abs(win.y - (ey + 0.5)) - 5.5
                d = np.abs(np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0)
                           - 2.5)
            cv.paint(win, cv.cover(d - 0.7), gc)
        ey = 0.5 * (eyes[0][1] + eyes[1][1])
        rim = 10.0 if idn.glasses == 1 else 11.0
        _stroke(cv, [[(eyes[0][0] + rim, ey - 1.5), (_CX, ey - 3.0), (eyes[1][0] - rim, ey - 1.5)]], 1.3, gc, 1.0,
                feat_dx)
        _stroke(cv, [[(eyes[0][0] - rim, ey - 1.5), (_CX - fw - 0.5, ey - 2.5)],
                     [(eyes[1][0] + rim, ey - 1.5), (_CX + fw + 0.5, ey - 2.5)]], 1.2, gc, 1.0, feat_dx * 0.5)

    # directional light and exposure over the whole picture, in the face's frame
    img = cv.img
    cl, sl = math.cos(scene.light_angle), math.sin(scene.light_angle)
    k = scene.light_strength / 60.0
    lit = cv.gx * (k * cl) + (cv.gy * (k * sl) + (1.0 - k * (cl * _CX + sl * 62.0)))
    gain = np.minimum(np.maximum(lit, 0.3), 1.7)
    gain *= scene.brightness * 255.0
    img *= gain[..., None]
    if noise is not None:
        img += noise
    return img  # 0..255 scale, not yet clipped


def _pose_matrix(scene: Scene) -> np.ndarray:
    """``(3, 3)`` canonical -> canonical pose: squash (yaw), scale, rotate about the landmark centre, shift."""
    cx, cy = _POSE_CENTRE
    th = math.radians(scene.rotation_deg)
    c, s = math.cos(th) * scene.scale, math.sin(th) * scene.scale
    squash = 1.0 - 0.12 * abs(scene.yaw)
    lin = np.array([[c, -s], [s, c]]) @ np.diag([squash, 1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.array([cx, cy]) - lin @ np.array([cx, cy]) + np.asarray(scene.shift)
    return m


def _landmarks_and_box(idn: Identity, g: dict[str, np.ndarray], scene: Scene, matrix: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    feat_dx, nose_dx = 3.5 * scene.yaw, 5.5 * scene.yaw
    pts = np.vstack([g["eyes"], g["nose_tip"][None], g["mouth_corners"]])
    pts[:, 0] += np.array([feat_dx, feat_dx, nose_dx, feat_dx, feat_dx])
    lm = pts @ matrix[:, :2].T + matrix[:, 2]
    brow_top = float(min(g["brow_inner"][:, 1].min(), g["brow_mid"][:, 1].min())) - 6.0
    corners = np.array([[_CX - idn.face_w, brow_top], [_CX + idn.face_w, brow_top],
                        [_CX - idn.face_w, float(g["chin"][0])], [_CX + idn.face_w, float(g["chin"][0])]])
    cp = corners @ matrix[:, :2].T + matrix[:, 2]
    box = np.array([cp[:, 0].min(), cp[:, 1].min(), cp[:, 0].max(), cp[:, 1].max()])
    return lm, box


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """0..255 float32 -> uint8, rounded and clipped (in place on ``img``)."""
    np.maximum(img, -0.5, out=img)
    np.minimum(img, 254.5, out=img)
    img += 0.5
    return img.astype(np.uint8)


def _draw(identity: Identity, aus_list: list[np.ndarray], scene: Scene, h: int, w: int, matrix: np.ndarray
          ) -> list[Render]:
    """Render one identity and scene with each AU set, sharing the base layers and noise."""
    grids = _grids([float(v) for v in invert_affine(matrix).ravel()], h, w)
    base = _base(identity, scene, matrix, grids, h, w)
    noise = _noise(scene, h, w)
    cache: dict[tuple, object] = {}
    out = []
    for aus in aus_list:
        aus = np.clip(np.asarray(aus, dtype=np.float64).reshape(2, len(AU_CODES)), 0.0, 1.0)
        g = face_geometry(identity, aus)
        img = _render(identity, aus, g, scene, base, noise, matrix, grids, cache)
        lm, box = _landmarks_and_box(identity, g, scene, matrix)
        out.append(Render(_to_uint8(img), lm, box, g))
    return out


def _face_matrix(scene: Scene, size: int) -> np.ndarray:
    k = size / 112.0
    return (np.diag([k, k, 1.0]) @ _pose_matrix(scene))[:2]


def render_face(identity: Identity, aus: np.ndarray, scene: Scene | None = None, size: int = 112) -> Render:
    """Render an aligned ``size`` x ``size`` face (template layout when the pose is zero).

    Args:
        identity: who.
        aus: ``(2, 14)`` AU intensities in [0, 1] (``action_units``); zeros give the poker face.
        scene: pose, light, background, noise; ``Scene()`` is frontal, even light, no noise.
        size: output side in pixels.

    Returns:
        ``Render`` with a ``(size, size, 3) uint8`` RGB image.
    """
    scene = scene or Scene()
    return _draw(identity, [aus], scene, size, size, _face_matrix(scene, size))[0]


def render_pair(identity: Identity, aus: np.ndarray, scene: Scene | None = None, size: int = 112
                ) -> tuple[Render, Render]:
    """``(face, poker_face)``: ``render_face`` with ``aus`` and with all AUs at zero.

    Byte-identical to two ``render_face`` calls, but the layers behind the face, the
    background and the noise are drawn once.
    """
    scene = scene or Scene()
    face, poker = _draw(identity, [aus, np.zeros((2, len(AU_CODES)))], scene, size, size,
                        _face_matrix(scene, size))
    return face, poker


def render_scene(
    identity: Identity,
    aus: np.ndarray,
    scene: Scene | None = None,
    canvas: tuple[int, int] = (320, 240),
    face_px: float = 90.0,
    centre: tuple[float, float] | None = None,
) -> Render:
    """Render the face somewhere inside a larger picture, for detection and alignment tests.

    Args:
        canvas: ``(width, height)`` of the picture in pixels.
        face_px: side in pixels that the 112-unit template square gets.
        centre: pixel position of the template centre (56, 56); the middle of the canvas if None.

    Returns:
        ``Render`` with a ``(height, width, 3) uint8`` image, landmarks and face box in its pixels.
    """
    scene = scene or Scene()
    w, h = canvas
    cx, cy = centre if centre is not None else (w / 2.0, h / 2.0)
    k = face_px / 112.0
    place = np.array([[k, 0.0, cx - 56.0 * k], [0.0, k, cy - 56.0 * k], [0.0, 0.0, 1.0]])
    matrix = (place @ _pose_matrix(scene))[:2]
    return _draw(identity, [aus], scene, h, w, matrix)[0]


def zero_pose(scene: Scene) -> Scene:
    """The same scene with the pose removed (light, background and noise kept)."""
    return replace(scene, rotation_deg=0.0, scale=1.0, shift=(0.0, 0.0), yaw=0.0)
