"""Who is drawn and how it is photographed: identity and scene parameters and their sampling.

Lengths are in canonical units (the 112-unit alignment template, see ``geometry``), colours
float RGB in [0, 1].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """Appearance of one person; lengths in canonical (112-template) units, colours RGB [0, 1]."""

    face_w: float  # half width at the cheekbones
    face_top: float  # skull height above the widest line
    face_cy: float  # y of the widest line
    chin_y: float  # y of the chin with the jaw closed
    jaw: float  # 0 = pointed/oval jaw, 1 = square jaw
    skin: RGB
    hair_style: int  # 0 bald, 1 short, 2 fringe, 3 long, 4 curly volume, 5 side-swept
    hair: RGB
    hairline: float  # y of the hairline at the midline
    hair_volume: float
    eye_hw: float  # half width of the eye opening
    eye_open: float  # upper lid height above the eye centre
    eye_low: float  # lower lid depth below the eye centre
    eye_tilt: float  # outer corners up (+) or down (-)
    iris_r: float
    iris: RGB
    brow_thick: float
    brow_dy: float  # brow height offset
    brow_arch: float
    brow_len: float
    brow: RGB
    nose_w: float  # half spread of the nostril wings
    lip_up: float  # upper lip thickness at the centre
    lip_low: float  # lower lip thickness at the centre
    lips: RGB
    beard: int  # 0 none, 1 stubble, 2 full, 3 goatee, 4 moustache
    glasses: int  # 0 none, 1 round, 2 rectangular
    glasses_colour: RGB
    age: float  # 0 young .. 1 old: wrinkle and line strength
    ear_r: float
    clothes: RGB
    blush: float


# Hair styles, beards and glasses by the integer codes of ``Identity``.
HAIR_BALD, HAIR_SHORT, HAIR_FRINGE, HAIR_LONG, HAIR_CURLY, HAIR_SIDE_SWEPT = range(6)
BEARD_NONE, BEARD_STUBBLE, BEARD_FULL, BEARD_GOATEE, BEARD_MOUSTACHE = range(5)
GLASSES_NONE, GLASSES_ROUND, GLASSES_RECTANGULAR = range(3)


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
    bg_colours: tuple[RGB, RGB] = (
        (0.55, 0.58, 0.62),
        (0.35, 0.37, 0.42),
    )
    bg_angle: float = 0.0
    bg_grain: float = 0.0  # fine per-pixel texture amplitude
    noise_sigma: float = 0.0  # sensor noise std in [0, 1] units
    seed: int = 0  # seeds background texture and sensor noise, so both renders share them


BACKGROUND_FLAT, BACKGROUND_GRADIENT, BACKGROUND_BLOTCHY = range(3)

# Skin tones from light to dark; a person's tone is a random point on this piecewise-linear ramp.
SKIN_RAMP = np.array(
    [[0.98, 0.84, 0.74], [0.91, 0.72, 0.58], [0.76, 0.54, 0.38], [0.55, 0.36, 0.24], [0.30, 0.19, 0.13]],
    dtype=np.float64,
)
# black, dark/mid/light brown, blond, red, grey, white, dyed violet; HAIR_P: their frequencies
HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],
        [0.16, 0.10, 0.07],
        [0.33, 0.21, 0.12],
        [0.52, 0.36, 0.20],
        [0.83, 0.69, 0.42],
        [0.58, 0.24, 0.10],
        [0.55, 0.55, 0.55],
        [0.86, 0.85, 0.83],
        [0.25, 0.18, 0.40],
    ],
    dtype=np.float64,
)
HAIR_P = np.array([0.24, 0.20, 0.15, 0.09, 0.11, 0.07, 0.06, 0.04, 0.04])
HAIR_STYLE_P = [0.08, 0.28, 0.18, 0.22, 0.10, 0.14]  # by HAIR_* code
BEARD_P = [0.62, 0.12, 0.12, 0.07, 0.07]  # by BEARD_* code
GLASSES_P = [0.72, 0.14, 0.14]  # by GLASSES_* code
GREY_HAIR = np.array([0.72, 0.71, 0.70])  # greying mixes 60 % of this into the hair colour
GREYING_AGE = 0.65  # age above which hair may grey
LIPSTICK = np.array([0.62, 0.10, 0.18])
# dark/mid brown, hazel, green, blue, grey
IRIS_COLOURS = np.array(
    [
        [0.22, 0.12, 0.06],
        [0.38, 0.22, 0.10],
        [0.45, 0.40, 0.18],
        [0.25, 0.45, 0.30],
        [0.25, 0.45, 0.70],
        [0.45, 0.52, 0.58],
    ],
    dtype=np.float64,
)
# Seeds identity_from_id's generator together with the id, so ids never collide with sample seeds.
IDENTITY_SEED_TAG = 0x1D_FACE
IDENTITY_CACHE_SIZE = 65536  # identities kept in memory: more than a training split holds


def rgb(c: np.ndarray) -> RGB:
    """A colour clipped to [0, 1] as a plain-float tuple (what the frozen dataclasses hold)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform(0.0, len(SKIN_RAMP) - 1.0)
    i = min(int(u), len(SKIN_RAMP) - 2)
    skin = SKIN_RAMP[i] * (1 - (u - i)) + SKIN_RAMP[i + 1] * (u - i)
    return skin * rng.uniform(0.93, 1.05) + rng.normal(0.0, 0.02, 3)


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity; wide ranges on purpose so that identity varies far more than expression."""
    # the order of the draws is part of every identity: reordering them changes every face
    skin = _skin_tone(rng)
    age = float(rng.beta(1.3, 2.5))
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_P)]
    if age > GREYING_AGE and rng.uniform() < 0.6:
        hair = hair * 0.4 + GREY_HAIR * 0.6
    hair = hair * rng.uniform(0.85, 1.15)
    brow = hair * 0.75 if hair.mean() < 0.5 else hair * 0.55
    lips = skin * np.array([0.86, 0.58, 0.58]) + np.array([0.06, 0.0, 0.02])
    if rng.uniform() < 0.2:  # lipstick
        lips = LIPSTICK * rng.uniform(0.7, 1.1)
    style = int(rng.choice(len(HAIR_STYLE_P), p=HAIR_STYLE_P))
    beard = int(rng.choice(len(BEARD_P), p=BEARD_P))
    return Identity(
        face_w=float(rng.uniform(36.5, 43.5)),
        face_top=float(rng.uniform(58.0, 66.0)),
        face_cy=float(rng.uniform(52.0, 60.0)),
        chin_y=float(rng.uniform(106.0, 116.0)),
        jaw=float(rng.uniform(0.0, 1.0)),
        skin=rgb(skin),
        hair_style=style,
        hair=rgb(hair),
        # a fringe covers the upper forehead, curly hair stands further off the skull
        hairline=float(rng.uniform(14.0, 24.0)) if style != HAIR_FRINGE else float(rng.uniform(29.0, 35.0)),
        hair_volume=float(rng.uniform(2.0, 6.0)) if style != HAIR_CURLY else float(rng.uniform(8.0, 13.0)),
        eye_hw=float(rng.uniform(7.0, 8.6)),
        eye_open=float(rng.uniform(3.0, 4.4)),
        eye_low=float(rng.uniform(2.0, 2.9)),
        eye_tilt=float(rng.uniform(-0.8, 1.2)),
        iris_r=float(rng.uniform(3.2, 3.9)),
        iris=rgb(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))] * rng.uniform(0.8, 1.2)),
        brow_thick=float(rng.uniform(1.6, 3.6)),
        brow_dy=float(rng.uniform(-1.5, 1.5)),
        brow_arch=float(rng.uniform(0.8, 3.0)),
        brow_len=float(rng.uniform(18.0, 23.0)),
        brow=rgb(brow),
        nose_w=float(rng.uniform(6.5, 10.0)),
        lip_up=float(rng.uniform(2.2, 4.2)),
        lip_low=float(rng.uniform(3.2, 6.0)),
        lips=rgb(lips),
        beard=beard,
        glasses=int(rng.choice(len(GLASSES_P), p=GLASSES_P)),
        # 60 % coloured frames, the rest near black
        glasses_colour=rgb(rng.uniform(0.0, 0.6, 3) * (rng.uniform() < 0.6) + rng.uniform(0.0, 0.12)),
        age=age,
        ear_r=float(rng.uniform(3.5, 5.0)),
        clothes=rgb(rng.uniform(0.05, 0.9, 3)),
        blush=float(rng.uniform(0.0, 0.25)),
    )


@functools.lru_cache(maxsize=IDENTITY_CACHE_SIZE)
def identity_from_id(identity_id: int) -> Identity:
    """The identity with this id: a pure function of the id (same id, same person, everywhere)."""
    return random_identity(np.random.default_rng([IDENTITY_SEED_TAG, int(identity_id)]))


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
        bg_colours=(rgb(c0), rgb(c1)),
        bg_angle=float(rng.uniform(0.0, 2 * math.pi)),
        bg_grain=float(rng.uniform(0.0, 0.05)),
        noise_sigma=float(rng.uniform(0.0, 0.03)),
        seed=int(rng.integers(2**31)),
    )
