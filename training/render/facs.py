"""FACS action units and the EMFACS emotion prototypes built from them.

Action units are ``(2, 14)`` float arrays in [0, 1]: row 0 acts on the image-left half of
the face, row 1 on the image-right half, columns in ``AU_CODES`` order. Symmetric
expressions have equal rows; unilateral ones (contempt) differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# The 14 action units the renderer draws (see docs/rendered-faces.md for the effect of each).
AU_CODES: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 20, 23, 26)
AU_INDEX: dict[int, int] = {code: i for i, code in enumerate(AU_CODES)}  # AU code -> column
N_SIDES = 2  # rows of an AU array: image-left half, image-right half

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
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
    aus = np.zeros((N_SIDES, len(AU_CODES)), dtype=np.float64)
    for side, mapping in ((slice(None), both), (0, left), (1, right)):
        for code, value in (mapping or {}).items():
            aus[side, AU_INDEX[code]] += value
    return np.clip(aus, 0.0, 1.0)


def prototype_aus(emotion: str, intensity: float = 1.0, side: int = 1) -> np.ndarray:
    """``(2, 14)`` AUs of an emotion's EMFACS prototype at ``intensity``.

    ``side`` (0 image-left, 1 image-right) picks the active half of unilateral prototypes.
    """
    weights = {code: w * intensity for code, w in PROTOTYPES[emotion].items()}
    if emotion in UNILATERAL:
        return action_units(left=weights) if side == 0 else action_units(right=weights)
    return action_units(weights)


def as_aus(aus: np.ndarray) -> np.ndarray:
    """Any AU input as a ``(2, 14)`` float64 array (raises on the wrong number of values)."""
    return np.asarray(aus, dtype=np.float64).reshape(N_SIDES, len(AU_CODES))


def au_by_side(aus: np.ndarray) -> list[dict[int, float]]:
    """``[image-left, image-right]`` ``{au_code: intensity}`` as plain floats.

    Plain floats on purpose: a ``np.float64`` scalar would promote every float32 pixel array
    it touches to float64.
    """
    rows = aus.tolist()
    return [{code: rows[s][i] for i, code in enumerate(AU_CODES)} for s in range(N_SIDES)]
