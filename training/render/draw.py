"""The face and its features, one drawing function per feature over a shared ``FaceContext``.

``FEATURE_LAYERS`` lists them in painting order (later layers cover earlier ones); ``light``
then applies the directional light, exposure and sensor noise. Coordinates are canonical
(see ``geometry``); every feature that moves with a head turn is drawn with its yaw offset.
Geometry is pulled out as plain floats first: a ``np.float64`` scalar would silently promote
every float32 pixel array to float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.render.facs import AU_CODES, au_by_side
from training.render.geometry import (
    BROW_ABOVE_EYE,
    FACE_MIDLINE_X,
    FEATURE_YAW_SHIFT,
    NOSE_YAW_SHIFT,
    Geometry,
)
from training.render.params import (
    BEARD_FULL,
    BEARD_GOATEE,
    BEARD_MOUSTACHE,
    BEARD_STUBBLE,
    GLASSES_ROUND,
    HAIR_BALD,
    HAIR_CURLY,
    HAIR_FRINGE,
    HAIR_LONG,
    HAIR_SHORT,
    HAIR_SIDE_SWEPT,
    Identity,
    Scene,
)
from training.render.raster import PIXEL_MAX, Canvas, Window, WindowKey, clip01, curves, ellipse, soft, stroke

CX = FACE_MIDLINE_X
# Fixed colours, float32 RGB in [0, 1].
LASH_RGB = np.array([0.07, 0.05, 0.05], np.float32)
EYE_WHITE_RGB = np.array([0.93, 0.92, 0.9], np.float32)
GLINT_RGB = np.array([1.0, 1.0, 1.0], np.float32)
TEETH_RGB = np.array([0.93, 0.91, 0.85], np.float32)
MOUTH_INSIDE_RGB = np.array([0.28, 0.07, 0.08], np.float32)
BLUSH_TINT = np.array([1.0, 0.6, 0.55], np.float32)  # x skin
# Skin multipliers for shadows and lines.
SHADOW_TONE = 0.55  # soft shadows, lid lines, chin crease
WRINKLE_TONE = 0.6  # forehead and glabella lines
EDGE_SHADE_DEPTH = 7.0  # canonical units inside the outline over which the face darkens (roundness)
EDGE_SHADE = 0.22  # darkening at the outline
MIN_AU = 0.02  # AU intensity below which its lines are not drawn
NOSE_BRIDGE_Y = 62.0  # canonical y of the centre of the nose bridge shadow
NASOLABIAL_TOP_Y = 68.0  # canonical y where the nasolabial folds start beside the nose
BEARD_LINE_Y = 84.0  # canonical y of the beard line at the midline, just above the mouth corners
HAIR_BOTTOM_Y = 100.0  # canonical y below which the front hair layer never reaches
LIGHT_FALLOFF = 60.0  # canonical units over which the light gradient reaches its full strength
LIGHT_CENTRE_Y = 62.0  # canonical y where the light gradient is neutral (x: the midline)
LIGHT_GAIN_RANGE = (0.3, 1.7)  # bounds of the light's brightness factor


@dataclass
class PairCache:
    """Layers that do not change with the expression, computed once for the renders of one
    identity and scene (a face and its poker face)."""

    # face-outline signed distance ``(h, w)`` float32 per (chin y, window): the outline only
    # changes with the jaw, so a face and its poker face usually share it
    face_outline: dict[tuple[float, WindowKey], np.ndarray] = field(default_factory=dict)
    # front hair layer per window: coverage ``(h, w)`` and colour ``(h, w, 3)`` float32
    hair: dict[WindowKey, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class FaceContext:
    """Everything a feature drawing needs for one render, as plain floats and float32 colours."""

    cv: Canvas
    idn: Identity
    scene: Scene
    g: Geometry
    cache: PairCache
    au: list[dict[int, float]]  # AU intensities per side, image-left first
    am: dict[int, float]  # AU intensities averaged over the two sides
    skin: np.ndarray  # (3,) float32
    hair: np.ndarray
    dark: np.ndarray  # skin in shadow
    wrinkle: np.ndarray  # skin in a line or fold
    feat_dx: float  # inner features slide with a head turn more than the outline
    nose_dx: float
    chin: float
    eyes: list[list[float]]  # (2, 2) eye centres
    corners: list[list[float]]  # (2, 2) mouth corners
    lid_up: list[float]  # (2,) lid heights above / below the eye centre
    lid_low: list[float]

    @classmethod
    def build(
        cls, cv: Canvas, idn: Identity, aus: np.ndarray, g: Geometry, scene: Scene, cache: PairCache
    ) -> FaceContext:
        """The context of ``(2, 14)`` AUs ``aus`` whose geometry is ``g = face_geometry(idn, aus)``."""
        skin = np.asarray(idn.skin, dtype=np.float32)
        au = au_by_side(aus)
        return cls(
            cv=cv,
            idn=idn,
            scene=scene,
            g=g,
            cache=cache,
            au=au,
            am={code: 0.5 * (au[0][code] + au[1][code]) for code in AU_CODES},
            skin=skin,
            hair=np.asarray(idn.hair, dtype=np.float32),
            dark=skin * np.float32(SHADOW_TONE),
            wrinkle=skin * np.float32(WRINKLE_TONE),
            feat_dx=FEATURE_YAW_SHIFT * scene.yaw,
            nose_dx=NOSE_YAW_SHIFT * scene.yaw,
            chin=float(g["chin"][0]),
            eyes=g["eyes"].tolist(),
            corners=g["mouth_corners"].tolist(),
            lid_up=g["lid_upper"].tolist(),
            lid_low=g["lid_lower"].tolist(),
        )

    def face_distance(self, win: Window) -> np.ndarray:
        """Signed distance of the face outline over ``win``, computed once per pair."""
        key = (self.chin, win.key)
        outline = self.cache.face_outline.get(key)
        if outline is None:
            outline = self.cache.face_outline[key] = face_sdf(win.x, win.y, self.idn, self.chin)
        return outline


def g1(g: Geometry, key: str) -> float:
    """A one-value geometry entry as a plain float."""
    return float(g[key][0])


# --------------------------------------------------------------------------- shapes


def face_sdf(x: np.ndarray, y: np.ndarray, idn: Identity, chin: float) -> np.ndarray:
    """Signed distance (approximate) of the face outline: an oval skull over a jaw whose
    squareness is ``idn.jaw``; ``chin`` moves with the jaw drop."""
    u = np.abs(x - CX) / idn.face_w
    dy = y - idn.face_cy
    upper = np.hypot(u, dy / idn.face_top)
    p = 2.0 + 1.8 * idn.jaw  # superellipse exponent: 2 is an oval, higher is squarer
    v = np.maximum(dy, 0.0) / (chin - idn.face_cy)
    lower = (u**p + v**p) ** (1.0 / p)
    r = np.where(dy < 0, upper, lower)
    return (r - 1.0) * idn.face_w


def _hairline(dxm: np.ndarray, idn: Identity) -> tuple[np.ndarray, float, float]:
    """The hairline ``y(x)`` of a style, how far down its sides reach and how far they sit inside
    the face outline (canonical units)."""
    style = idn.hair_style
    if style == HAIR_FRINGE:  # straight fringe with a slight wave
        return idn.hairline + 0.004 * dxm * dxm + 0.6 * np.sin(dxm * 0.9), 64.0, 2.5
    if style == HAIR_SIDE_SWEPT:  # the hairline slopes
        return idn.hairline + 0.010 * dxm * dxm + 0.25 * dxm + 6.0, 56.0, 2.0
    if style == HAIR_LONG:  # centre parting, locks down the sides
        return idn.hairline + 0.016 * dxm * dxm - 3.0 + 4.0 * np.exp(-dxm * dxm / 8.0), 98.0, 3.5
    side_len, inset = (50.0, 1.5) if style == HAIR_SHORT else (58.0, 2.0)
    return idn.hairline + 0.012 * dxm * dxm, side_len, inset


def hair_sdf(x: np.ndarray, y: np.ndarray, idn: Identity) -> np.ndarray:
    """Signed distance of the hair mass above and beside the face (front layer)."""
    fw, vol = idn.face_w, idn.hair_volume
    top = idn.face_cy - idn.face_top
    ax, ay = fw + vol, idn.face_cy - top + vol
    dxm = x - CX
    r = np.hypot(dxm / ax, (y - idn.face_cy) / ay)
    d_skull = (r - 1.0) * ax
    if idn.hair_style == HAIR_CURLY:  # a bumpy outline
        d_skull = d_skull - 1.8 * np.sin(9.0 * np.arctan2(y - idn.face_cy, dxm))
    line, side_len, inset = _hairline(dxm, idn)
    d_line = y - line
    d_side = np.maximum(fw - inset - np.abs(dxm), y - side_len)
    return np.maximum(d_skull, np.minimum(d_line, d_side))


# --------------------------------------------------------------------------- features, back to front


def draw_face(ctx: FaceContext) -> None:
    """The face with edge shading for roundness."""
    cv, idn = ctx.cv, ctx.idn
    fw, top = idn.face_w, idn.face_cy - idn.face_top
    win = cv.window(CX - fw, top, CX + fw, ctx.chin)
    if win is not None:
        d = ctx.face_distance(win)
        edge = clip01(1.0 + d * (1.0 / EDGE_SHADE_DEPTH))[..., None]  # 0 deep inside, 1 at the outline
        cv.paint(win, cv.cover(d), ctx.skin * (1.0 - EDGE_SHADE * edge * edge))


def draw_shading(ctx: FaceContext) -> None:
    """Eye sockets and cheeks: soft shading before the sharp features."""
    cv, idn, dark, dx = ctx.cv, ctx.idn, ctx.dark, ctx.feat_dx
    for s in (0, 1):
        ex, ey = ctx.eyes[s]
        side = s * 2.0 - 1.0
        ellipse(cv, ex, ey - 3.0, idn.eye_hw + 4.0, 6.5, dark, alpha=0.16, softness=4.0, dx=dx)
        a6, a12 = ctx.au[s][6], ctx.au[s][12]
        cheek_y = ey + 15.0 - 3.5 * a6 - 2.0 * a12
        ellipse(
            cv,
            ex + side * 2.0,
            cheek_y,
            7.0,
            5.5,
            BLUSH_TINT * ctx.skin,
            alpha=idn.blush + 0.25 * a6,
            softness=4.0,
            dx=dx,
        )
        if a6 + a12 > 0.05:  # the raised cheek casts a shadow under it
            ellipse(cv, ex + side * 3.0, cheek_y + 7.0, 8.0, 2.5, dark, alpha=0.3 * max(a6, a12), softness=3.0, dx=dx)


def draw_forehead_lines(ctx: FaceContext) -> None:
    """Forehead lines (age, AU1 in the middle, AU2 at the sides) and glabella lines (AU4)."""
    cv, am, idn, dx = ctx.cv, ctx.am, ctx.idn, ctx.feat_dx
    brow_base = 0.5 * (ctx.eyes[0][1] + ctx.eyes[1][1]) - BROW_ABOVE_EYE + idn.brow_dy
    f_inner = 0.75 * am[1] + 0.25 * idn.age
    f_outer = 0.75 * am[2] + 0.25 * idn.age
    if max(f_inner, f_outer) > MIN_AU:
        lines = []
        for k in range(3):
            yk = brow_base - 7.0 - 3.6 * k
            lines.append(((CX - 16.0, yk + 1.5), (CX, yk), (CX + 16.0, yk + 1.5)))
        curves(cv, lines, 0.9, ctx.wrinkle, 1.0, dx, alpha_x=(f_inner, f_outer, 10.0, CX))
    if am[4] > MIN_AU:
        curves(
            cv,
            [
                ((CX + s * 2.3, brow_base - 1.0), (CX + s * 1.95, brow_base + 2.5), (CX + s * 1.6, brow_base + 6.0))
                for s in (-1.0, 1.0)
            ],
            1.0,
            ctx.wrinkle,
            0.8 * am[4],
            dx,
            vertical=True,
        )


def draw_folds(ctx: FaceContext) -> None:
    """Nasolabial folds (age, AU6/9/12) and the AU14 dimple."""
    cv, idn, skin, dx = ctx.cv, ctx.idn, ctx.skin, ctx.feat_dx
    for s in (0, 1):
        au = ctx.au[s]
        sign = s * 2.0 - 1.0
        cx, cy = ctx.corners[s]
        depth = 0.12 + 0.3 * idn.age + 0.7 * max(au[12], au[9], 0.6 * au[6])
        p0 = (CX + sign * (idn.nose_w + 2.0), NASOLABIAL_TOP_Y - 1.5 * au[9])
        p2 = (cx + sign * 3.5, cy + 3.0)
        p1 = (p2[0] + sign * 1.6, 0.5 * (p0[1] + p2[1]))
        curves(cv, [(p0, p1, p2)], 1.1, skin * np.float32(0.62), min(depth, 0.85), dx, vertical=True)
        a14 = au[14]
        if a14 > MIN_AU:  # a short crease beside the tightened corner
            curves(
                cv,
                [((cx + sign * 2.3, cy - 2.5), (cx + sign * 3.0, cy), (cx + sign * 2.3, cy + 2.5))],
                1.0,
                skin * np.float32(0.5),
                0.85 * a14,
                dx,
                vertical=True,
            )


def draw_beard(ctx: FaceContext) -> None:
    """Stubble, full beard or goatee, under the features."""
    cv, idn, hair, chin = ctx.cv, ctx.idn, ctx.hair, ctx.chin
    if idn.beard in (BEARD_STUBBLE, BEARD_FULL):
        win = cv.window(CX - idn.face_w, 50.0, CX + idn.face_w, chin + 1)
        if win is not None:
            dxm = win.x - CX
            # the beard line runs from the sideburns down to just above the mouth corners
            d = np.maximum(ctx.face_distance(win), (BEARD_LINE_Y - 0.022 * dxm * dxm) - win.y)
            if idn.beard == BEARD_STUBBLE:  # a faint shadow, darker than the skin whatever the hair colour
                cv.paint(win, soft(d, 8.0) * 0.2, np.minimum(hair, ctx.skin) * np.float32(0.6))
            else:
                cv.paint(win, soft(d, 2.5) * 0.92, hair)
    elif idn.beard == BEARD_GOATEE:
        lb = g1(ctx.g, "lip_bottom")  # between lower lip and chin, so it follows the jaw
        ellipse(cv, CX, 0.5 * (lb + chin) + 0.5, 7.5, max(0.5 * (chin - lb), 3.0), hair, alpha=0.92, dx=ctx.feat_dx)


def draw_nose(ctx: FaceContext) -> None:
    """Bridge shadow on the side away from the light, wings, nostrils, AU9 wrinkles."""
    cv, idn, skin, dark, dx, a9 = ctx.cv, ctx.idn, ctx.skin, ctx.dark, ctx.nose_dx, ctx.am[9]
    tx, ty = ctx.g["nose_tip"].tolist()
    lift = g1(ctx.g, "nostril_lift")
    shadow_side = -1.0 if math.cos(ctx.scene.light_angle) > 0 else 1.0
    ellipse(cv, tx + shadow_side * 4.0, NOSE_BRIDGE_Y, 1.8, 9.0, dark, alpha=0.25, softness=2.5, dx=dx)
    ellipse(cv, tx, ty + 1.6, idn.nose_w * 0.6, 2.2, dark, alpha=0.2, softness=2.0, dx=dx)
    wing = idn.nose_w * (1.0 + 0.12 * a9)
    arcs = []
    for s in (-1.0, 1.0):
        c = (tx + s * wing * 0.78, ty - 1.0 - lift)
        arcs.append(((c[0], c[1] - 3.0), (c[0] + s * 1.9, c[1] - 0.2), (c[0] - s * 0.5, c[1] + 2.6)))
        ellipse(cv, tx + s * wing * 0.42, ty + 1.1 - 0.6 * lift, 1.7 + 0.2 * a9, 0.9, skin * np.float32(0.25), dx=dx)
    curves(cv, arcs, 0.9, skin * np.float32(0.55), 0.65, dx, vertical=True)
    ellipse(
        cv, tx - shadow_side * 1.0, ty - 2.0, 2.0, 1.5, np.minimum(skin * 1.18, 1.0), alpha=0.5, softness=1.5, dx=dx
    )
    if a9 > MIN_AU:
        lines = [
            ((tx - 4.0, 56.0 + 2.6 * k + 0.8), (tx, 56.0 + 2.6 * k), (tx + 4.0, 56.0 + 2.6 * k + 0.8)) for k in range(3)
        ]
        curves(cv, lines, 0.9, skin * np.float32(0.5), 0.85 * a9, dx)
        stroke(
            cv,
            [[(tx + s * 4.5, 55.0), (tx + s * 6.5, 60.5)] for s in (-1.0, 1.0)],  # "bunny lines"
            0.9,
            skin * np.float32(0.55),
            0.7 * a9,
            dx,
        )


def draw_mouth(ctx: FaceContext) -> None:
    """Lips, mouth opening, teeth and the mouth line, all bounded by the two corners."""
    cv, g = ctx.cv, ctx.g
    (xl, yl), (xr, yr) = ctx.corners
    xm, hw = 0.5 * (xl + xr), 0.5 * (xr - xl)
    lip_top, open_top = g1(g, "lip_top"), g1(g, "open_top")
    open_bot, lip_bot = g1(g, "open_bottom"), g1(g, "lip_bottom")
    win = cv.window(xl - 2, min(lip_top, yl, yr) - 2, xr + 2, max(lip_bot, yl, yr) + 2, ctx.feat_dx)
    if win is None:
        return
    t = np.minimum(np.maximum((win.x - xm) * (1.0 / hw), -1.0), 1.0)  # -1 left corner .. 1 right corner
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
    lip = np.asarray(ctx.idn.lips, dtype=np.float32)
    # lower lip a little lighter than the upper one: light from above
    lip_col = np.where((win.y > o_bot)[..., None], lip * np.float32(1.08), lip * np.float32(0.92))
    cv.paint(win, lips_a, lip_col)
    if open_bot - open_top > 0.3:
        inner = cv.cover(np.maximum(np.maximum(o_top - win.y, win.y - o_bot), outside + 0.5))
        teeth_line = o_top + np.minimum(3.2, 0.8 * (o_bot - o_top))
        inside = np.where((win.y < teeth_line)[..., None], TEETH_RGB, MOUTH_INSIDE_RGB)
        cv.paint(win, inner, inside)
    # the line between the lips, darkest at the corners; its ramp slope is capped like other lines
    mid = 0.5 * (o_top + o_bot)
    line_a = clip01(0.5 - (np.abs(win.y - mid) - 0.45) * min(cv.k, 2.0)) * (outside < 0.8)
    cv.paint(win, line_a * 0.85, ctx.skin * np.float32(0.28))


def draw_moustache_and_chin_crease(ctx: FaceContext) -> None:
    """Moustache over the upper lip edge, then the crease under the lower lip."""
    if ctx.idn.beard in (BEARD_FULL, BEARD_MOUSTACHE):
        (xl, yl), (xr, yr) = ctx.corners
        lt = g1(ctx.g, "lip_top")
        stroke(
            ctx.cv,
            [[(xl - 1.0, yl + 1.0), (CX - 5, lt - 0.6), (CX + 5, lt - 0.6), (xr + 1.0, yr + 1.0)]],
            3.2,
            ctx.hair,
            0.95,
            ctx.feat_dx,
        )
    lb = g1(ctx.g, "lip_bottom")
    curves(ctx.cv, [((CX - 5, lb + 3.0), (CX, lb + 2.2), (CX + 5, lb + 3.0))], 1.4, ctx.dark, 0.25, ctx.feat_dx)


def _eyeball(ctx: FaceContext, s: int) -> bool:
    """White, iris, pupil, glint, lash line and lower lid line of one eye; False when it is off the canvas."""
    cv, idn = ctx.cv, ctx.idn
    hw, ir = idn.eye_hw, idn.iris_r
    ex, ey = ctx.eyes[s]
    out = s * 2.0 - 1.0
    hu, hl = ctx.lid_up[s], ctx.lid_low[s]
    win = cv.window(ex - hw - 1, ey - hu - 2.5, ex + hw + 1, ey + hl + 1.5, ctx.feat_dx)
    if win is None:
        return False
    u = (win.x - ex) * (1.0 / hw)  # -1 .. 1 across the eye opening
    s2 = np.maximum(1.0 - u * u, 0.0)
    yc = ey - (idn.eye_tilt * out) * u
    y_up = yc - hu * s2 * (1.0 + (0.25 * out) * u)  # lid peak slightly towards the nose side
    y_lo = yc + hl * s2
    beyond = np.abs(u) * hw - hw
    a_eye = cv.cover(np.maximum(np.maximum(y_up - win.y, win.y - y_lo), beyond))
    cv.paint(win, a_eye, EYE_WHITE_RGB)
    r_iris = np.hypot(win.x - ex, win.y - (ey + 0.3))
    cv.paint(win, cv.cover(r_iris - ir) * a_eye, np.asarray(idn.iris, dtype=np.float32))
    cv.paint(win, cv.cover(r_iris - 0.45 * ir) * a_eye, LASH_RGB)  # pupil
    d_glint = np.hypot(win.x - (ex - 1.1), win.y - (ey - 1.0)) - 0.75
    cv.paint(win, cv.cover(d_glint) * a_eye, GLINT_RGB)
    lash_w = 0.55 + 0.5 * clip01(u * out)  # thicker towards the outer corner
    cv.paint(win, cv.cover(np.maximum(np.abs(win.y - y_up + 0.2) - lash_w, beyond - 0.5)), LASH_RGB)
    cv.paint(win, cv.cover(np.maximum(np.abs(win.y - y_lo) - 0.3, beyond)) * 0.5, ctx.dark)
    return True


def _eye_lines(ctx: FaceContext, s: int) -> None:
    """Lid crease (higher when the lid is raised), under-eye furrow (AU6/AU7), crow's feet."""
    cv, idn, dark, dx, au = ctx.cv, ctx.idn, ctx.dark, ctx.feat_dx, ctx.au[s]
    hw = idn.eye_hw
    ex, ey = ctx.eyes[s]
    out = s * 2.0 - 1.0
    hu, hl = ctx.lid_up[s], ctx.lid_low[s]
    crease = ((ex - out * hw * 0.8, ey - 1.0), (ex, ey - hu - 1.8 - 0.6 * au[5]), (ex + out * hw * 0.95, ey - 1.5))
    curves(cv, [crease], 0.8, dark, 0.45, dx)
    squint = max(au[6], au[7])
    under = ((ex - out * hw * 0.7, ey + hl + 1.2), (ex, ey + hl + 2.4), (ex + out * hw * 0.9, ey + hl + 1.2))
    curves(cv, [under], 0.9, dark, 0.15 + 0.25 * idn.age + 0.5 * squint, dx)
    crow = 0.3 * idn.age + 0.75 * au[6]  # crow's feet at the outer corner
    if crow > 0.03:
        ox = ex + out * (hw + 1.5)
        stroke(cv, [[(ox, ey + 0.3 * k), (ox + out * 3.5, ey + 2.0 * k)] for k in (-1.0, 1.0)], 0.7, dark, crow, dx)


def draw_eyes(ctx: FaceContext) -> None:
    """Both eyes with their lids and lines, image-left first; an eye off the canvas has no lines either."""
    for s in (0, 1):
        if _eyeball(ctx, s):
            _eye_lines(ctx, s)


def draw_brows(ctx: FaceContext) -> None:
    """Each brow: a tapered stroke through its inner, middle and outer points."""
    cv, idn = ctx.cv, ctx.idn
    brow = np.asarray(idn.brow, dtype=np.float32)
    bi, bm, bo = ctx.g["brow_inner"].tolist(), ctx.g["brow_mid"].tolist(), ctx.g["brow_outer"].tolist()
    for s in (0, 1):
        (ix, iy), (mx, my), (ox, oy) = bi[s], bm[s], bo[s]
        x0, x1 = min(ix, ox), max(ix, ox)
        win = cv.window(
            x0 - 1, min(iy, my, oy) - idn.brow_thick - 1, x1 + 1, max(iy, my, oy) + idn.brow_thick + 1, ctx.feat_dx
        )
        if win is None:
            continue
        x = win.x
        xi, xmid, xo = x - ix, x - mx, x - ox
        # quadratic through the three points (Lagrange form)
        yb = (
            (xmid * xo) * (iy / ((ix - mx) * (ix - ox)))
            + (xi * xo) * (my / ((mx - ix) * (mx - ox)))
            + (xi * xmid) * (oy / ((ox - ix) * (ox - mx)))
        )
        f = clip01(xi * (1.0 / (ox - ix)))  # 0 at the inner end, 1 at the outer
        half = (0.5 * idn.brow_thick) * (1.0 - 0.55 * f * f)
        d = np.maximum(np.abs(win.y - yb) - half, np.maximum(x0 - x, x - x1))
        cv.paint(win, cv.cover(d) * 0.95, brow)


def draw_hair(ctx: FaceContext) -> None:
    """Hair in front of the forehead; it never moves with the expression, so it is computed once per pair."""
    cv, idn = ctx.cv, ctx.idn
    if idn.hair_style == HAIR_BALD:
        return
    fw, top = idn.face_w, idn.face_cy - idn.face_top
    win = cv.window(CX - fw - 14, top - idn.hair_volume - 4, CX + fw + 14, HAIR_BOTTOM_Y)
    if win is None:
        return
    layer = ctx.cache.hair.get(win.key)
    if layer is None:
        d = hair_sdf(win.x, win.y, idn)
        sheen = clip01(1.0 + d * 0.1)[..., None]  # a little lighter towards the edges
        layer = ctx.cache.hair[win.key] = (cv.cover(d), ctx.hair * (0.8 + 0.25 * sheen))
    cv.paint(win, *layer)


def draw_glasses(ctx: FaceContext) -> None:
    """Round or rectangular rims, the bridge and the temples."""
    cv, idn, eyes, dx = ctx.cv, ctx.idn, ctx.eyes, ctx.feat_dx
    if not idn.glasses:
        return
    gc = np.asarray(idn.glasses_colour, dtype=np.float32)
    for s in (0, 1):
        ex, ey = eyes[s]
        win = cv.window(ex - 12.5, ey - 10.5, ex + 12.5, ey + 10.5, dx)
        if win is None:
            continue
        if idn.glasses == GLASSES_ROUND:
            d = np.abs(np.hypot(win.x - ex, win.y - ey) - 10.0)
        else:  # rounded rectangle
            qx = np.abs(win.x - ex) - 8.5
            qy = np.abs(win.y - (ey + 0.5)) - 5.5
            d = np.abs(np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0)) + np.minimum(np.maximum(qx, qy), 0.0) - 2.5)
        cv.paint(win, cv.cover(d - 0.7), gc)
    ey = 0.5 * (eyes[0][1] + eyes[1][1])
    rim = 10.0 if idn.glasses == GLASSES_ROUND else 11.0  # rim half width at the eye's level
    stroke(cv, [[(eyes[0][0] + rim, ey - 1.5), (CX, ey - 3.0), (eyes[1][0] - rim, ey - 1.5)]], 1.3, gc, 1.0, dx)
    # the temples run back over the ears, which slide half as far with a head turn
    stroke(
        cv,
        [
            [(eyes[0][0] - rim, ey - 1.5), (CX - idn.face_w - 0.5, ey - 2.5)],
            [(eyes[1][0] + rim, ey - 1.5), (CX + idn.face_w + 0.5, ey - 2.5)],
        ],
        1.2,
        gc,
        1.0,
        dx * 0.5,
    )


# Painting order, back to front: later features cover earlier ones.
FEATURE_LAYERS: tuple[Callable[[FaceContext], None], ...] = (
    draw_face,
    draw_shading,
    draw_forehead_lines,
    draw_folds,
    draw_beard,
    draw_nose,
    draw_mouth,
    draw_moustache_and_chin_crease,
    draw_eyes,
    draw_brows,
    draw_hair,
    draw_glasses,
)


def draw_features(ctx: FaceContext) -> None:
    """Paint the face and every feature onto ``ctx.cv``, back to front."""
    for layer in FEATURE_LAYERS:
        layer(ctx)


def light(cv: Canvas, scene: Scene, noise: np.ndarray | None) -> np.ndarray:
    """Directional light and exposure over the whole picture (in the face's frame), then sensor noise.

    Returns the canvas image, float32 ``(h, w, 3)`` in 0..255 units, unclipped.
    """
    img = cv.img
    cl, sl = math.cos(scene.light_angle), math.sin(scene.light_angle)
    k = scene.light_strength / LIGHT_FALLOFF
    lit = cv.gx * (k * cl) + (cv.gy * (k * sl) + (1.0 - k * (cl * CX + sl * LIGHT_CENTRE_Y)))
    gain = np.minimum(np.maximum(lit, LIGHT_GAIN_RANGE[0]), LIGHT_GAIN_RANGE[1])
    gain *= scene.brightness * PIXEL_MAX
    img *= gain[..., None]
    if noise is not None:
        img += noise
    return img
