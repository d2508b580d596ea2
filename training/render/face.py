"""Procedural frontal faces from identity parameters and FACS action-unit intensities: the public API.

The renderer is split by concern: ``facs`` (action units, emotion prototypes), ``params``
(identity and scene, and their sampling), ``geometry`` (feature points in the canonical frame,
pose), ``raster`` (signed-distance drawing toolkit), ``backdrop`` (what lies behind the face)
and ``draw`` (one function per facial feature). This module renders with them and re-exports
their public names, so ``training.render.face`` stays the one place to import from.

Images are ``(H, W, 3) uint8`` RGB. With zero pose a render is an aligned face at any size:
its 5 landmarks land on ``service.vision.align.template_landmarks(size)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.vision.align import invert_affine
from training.render.backdrop import back_layers, sensor_noise
from training.render.draw import FaceContext, PairCache, draw_features, light
from training.render.facs import (
    AU_CODES,
    EMOTIONS,
    PROTOTYPES,
    UNILATERAL,
    action_units,
    as_aus,
    prototype_aus,
)
from training.render.geometry import (
    Geometry,
    face_geometry,
    face_matrix,
    landmarks_and_box,
    placed_matrix,
)
from training.render.params import Identity, Scene, identity_from_id, random_identity, random_scene
from training.render.raster import Canvas, matrix_floats, pixel_grids, to_uint8

__all__ = [
    "AU_CODES",
    "EMOTIONS",
    "PROTOTYPES",
    "UNILATERAL",
    "Identity",
    "Render",
    "Scene",
    "action_units",
    "face_geometry",
    "identity_from_id",
    "prototype_aus",
    "random_identity",
    "random_scene",
    "render_face",
    "render_pair",
    "render_scene",
]


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
    geometry: Geometry = field(repr=False)


def _render_all(
    identity: Identity, aus_list: list[np.ndarray], scene: Scene, h: int, w: int, matrix: np.ndarray
) -> list[Render]:
    """Render one identity and scene with each AU set, sharing the back layers, noise and cache."""
    grids = pixel_grids(matrix_floats(invert_affine(matrix)), h, w)
    base = back_layers(identity, scene, matrix, grids, h, w)
    noise = sensor_noise(scene, h, w)
    cache = PairCache()
    out = []
    for aus in aus_list:
        aus = np.clip(as_aus(aus), 0.0, 1.0)
        g = face_geometry(identity, aus)
        ctx = FaceContext.build(Canvas(base.copy(), matrix, grids), identity, aus, g, scene, cache)
        draw_features(ctx)
        img = light(ctx.cv, scene, noise)
        lm, box = landmarks_and_box(identity, g, scene, matrix)
        out.append(Render(to_uint8(img), lm, box, g))
    return out


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
    return _render_all(identity, [aus], scene, size, size, face_matrix(scene, size))[0]


def render_pair(
    identity: Identity, aus: np.ndarray, scene: Scene | None = None, size: int = 112
) -> tuple[Render, Render]:
    """``(face, poker_face)``: ``render_face`` with ``aus`` and with all AUs at zero.

    Byte-identical to two ``render_face`` calls, but the layers behind the face, the
    background and the noise are drawn once.
    """
    scene = scene or Scene()
    face, poker = _render_all(
        identity, [aus, np.zeros((2, len(AU_CODES)))], scene, size, size, face_matrix(scene, size)
    )
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
    centre = centre if centre is not None else (w / 2.0, h / 2.0)
    return _render_all(identity, [aus], scene, h, w, placed_matrix(scene, face_px, centre))[0]
