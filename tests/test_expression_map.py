"""Expression maps: the pure functions, and on rendered faces, where the true poker face (and
so the true expression region) is known, the shipped model's maps land on that region."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.vision.expression_map import (
    difference_map,
    expression_map,
    expression_map_png,
    gaussian_blur,
    mass_inside,
    overlay,
    true_expression_region,
)
from tests.conftest import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parent.parent


def grey_face(size: int = 48, level: int = 120) -> np.ndarray:
    return np.full((size, size, 3), level, np.uint8)


def test_identical_faces_give_an_empty_map():
    face = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert not expression_map(face, face).any()
    nearly = np.clip(face.astype(int) + 1, 0, 255).astype(np.uint8)  # PNG-rounding-sized change
    assert not expression_map(face, nearly).any()
    assert np.array_equal(overlay(face, expression_map(face, face)), face)  # nothing drawn


def test_map_peaks_where_the_faces_differ():
    face, poker = grey_face(), grey_face()
    face[30:38, 14:34] = 200  # a "smile" in the lower half
    heat = expression_map(face, poker)
    assert heat.dtype == np.float32 and heat.shape == (48, 48)
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0.0
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 30 <= y < 38 and 14 <= x < 34
    region = np.zeros((48, 48), bool)
    region[26:42, 10:38] = True
    assert mass_inside(heat, region) > 0.95
    assert heat[:20].max() == 0.0  # the floor removes the blur's far tail: the eyes stay cold


def test_blur_keeps_mass_and_symmetry():
    impulse = np.zeros((31, 31), np.float32)
    impulse[15, 15] = 1.0
    out = gaussian_blur(impulse, 2.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(out, out.T) and np.allclose(out, out[::-1, ::-1])
    assert np.array_equal(gaussian_blur(impulse, 0.0), impulse)


def test_overlay_and_png():
    face, poker = grey_face(), grey_face()
    face[10:20, 10:20] = 250
    png = expression_map_png(face, poker)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape == (48, 48, 3)
    assert np.array_equal(img[-5:, -5:], face[-5:, -5:])  # cold corner: the face shows through
    assert not np.array_equal(img[15, 15], face[15, 15])  # hot spot: coloured
    with pytest.raises(ValueError):
        difference_map(face, grey_face(64))
    with pytest.raises(ValueError):
        overlay(face, np.zeros((10, 10), np.float32))


def rendered_pairs(size: int, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Expressive rendered faces of held-out identities (every emotion but neutral) and their true poker faces."""
    from training.render.dataset import EMOTIONS, IDENTITY_RANGES, render_sample

    labels = [i for i, name in enumerate(EMOTIONS) if name != "neutral"]
    samples = [
        render_sample((seed, j), size, label=labels[j % len(labels)], identity_range=IDENTITY_RANGES["test"])
        for j in range(count)
    ]
    return np.stack([s.image for s in samples]), np.stack([s.poker_face for s in samples])


@pytest.mark.slow
def test_shipped_model_maps_fall_on_the_true_expression_region():
    """Most of each map's mass falls where the true poker face differs from the face.

    Measured with the shipped model on 28 faces of seed 20261125 (and 28 of seed 20261124):
    26 of 28 (27 of 28) maps are non-empty; the others are faces the model leaves unchanged
    (smoothed difference under one grey level), whose map is empty rather than stretched noise.
    The non-empty maps put on average 0.727 (0.733) of their mass, 0.424 (0.415) at worst,
    inside a region covering 0.23 (0.24) of the face; the true poker face's own maps put 0.97
    there. Asserted below with margins: >= 3/4 non-empty, mean >= 0.6, each >= 0.3, and at
    least twice the region's share of the face.
    """
    from service.models import EmotionModel
    from service.vision.expression_map import SIGMA_FRACTION

    model = EmotionModel.from_dir(DEFAULT_MODEL_DIR, providers=["CPUExecutionProvider"], intra_op_threads=1)
    size = model.input_hw[0]
    faces, pokers = rendered_pairs(size, seed=20261125, count=28)
    generated = model.poker_faces(faces)
    masses, areas, true_masses = [], [], []
    for face, poker, gen in zip(faces, pokers, generated):
        region = true_expression_region(face, poker, SIGMA_FRACTION * size)
        heat = expression_map(face, gen)
        if heat.any():
            masses.append(mass_inside(heat, region))
        true_masses.append(mass_inside(expression_map(face, poker), region))
        areas.append(region.mean())
    masses = np.array(masses)
    assert np.mean(true_masses) > 0.9  # the region and the map agree when the poker face is the truth
    assert len(masses) >= 0.75 * len(faces), f"only {len(masses)} of {len(faces)} maps show anything"
    assert masses.mean() >= 0.6, masses.round(2)
    assert masses.min() >= 0.3, masses.round(2)
    assert masses.mean() >= 2 * np.mean(areas), (masses.mean(), np.mean(areas))
