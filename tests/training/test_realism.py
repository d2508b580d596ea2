"""The C2ST yardstick on stand-ins: two draws of one distribution score about 0.5, two sets
that differ by a painted bar about 1.0, and the ROC AUC is the rank statistic."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from training.realism import C2STConfig, c2st, roc_auc


def _faces(n: int, seed: int, bar: bool = False) -> np.ndarray:
    """Grey blob faces of one distribution: a bright ellipse on noise; optionally a dark bar
    across the lower half at a position that varies a little."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        cx, cy = 16 + rng.normal(0, 1.5), 15 + rng.normal(0, 1.5)
        face = 90 + 80 * (((xx - cx) / 9) ** 2 + ((yy - cy) / 12) ** 2 < 1) + rng.normal(0, 20, (32, 32))
        if bar:
            row = int(22 + rng.integers(-1, 2))
            face[row : row + 2, 10:22] = 30
        out[i] = np.clip(face, 0, 255).astype(np.uint8)[..., None]
    return out


def test_roc_auc_is_the_rank_statistic() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5  # a tie counts half
    with pytest.raises(ValueError):
        roc_auc(np.array([1.0]), np.array([1]))


@pytest.mark.parametrize(("bar", "low", "high"), [(False, 0.3, 0.7), (True, 0.95, 1.0)])
def test_identical_sets_score_about_half_and_separable_sets_about_one(bar: bool, low: float, high: float) -> None:
    cfg = C2STConfig(folds=3, epochs=6, width=8)
    result = c2st(_faces(90, seed=1, bar=bar), _faces(90, seed=2), cfg)
    assert low <= result.auc <= high, result
    assert len(result.fold_aucs) == 3 and result.n_a == result.n_b == 90


def test_sets_of_different_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        c2st(np.zeros((10, 32, 32), np.uint8), np.zeros((10, 48, 48), np.uint8))


def test_the_served_realism_test_draws_both_sides_and_scores_the_poker_faces() -> None:
    """``served_eval``: the faces of each side are drawn from their own class, seeded, and
    too few faces is an error, not a smaller test; the shipped model's poker faces are scored
    against the neutral side beside the inputs' baseline."""
    from service.models import EmotionModel
    from tests.conftest import DEFAULT_MODEL_DIR
    from training.served_eval import poker_face_realism, realism_samples, served_crops

    y = np.array([0, 1, 0, 2, 0, 3, 0, 1, 0, 2])
    neutral, expressive = realism_samples(y, 0, 4, seed=5)
    assert (y[neutral] == 0).all() and (y[expressive] != 0).all()
    assert len(set(neutral)) == len(set(expressive)) == 4
    assert all((a == b).all() for a, b in zip(realism_samples(y, 0, 4, seed=5), (neutral, expressive)))
    with pytest.raises(ValueError, match="only 5 neutral"):
        realism_samples(y, 0, 6, seed=5)

    model = EmotionModel.from_dir(DEFAULT_MODEL_DIR, providers=["CPUExecutionProvider"], intra_op_threads=1)
    crops = list(_faces(24, seed=3))  # 32 px RGB: resized to the input
    sides = served_crops(model, crops)
    assert sides.shape == (24, *model.input_hw, 3)
    cfg = C2STConfig(folds=2, epochs=1, width=4)
    result = poker_face_realism(model, sides[:12], sides[12:], cfg)
    assert result["n"] == 12 and result["folds"] == 2
    for side in ("inputs", "poker_faces"):
        assert result[side]["n_a"] == result[side]["n_b"] == 12 and 0.0 <= result[side]["auc"] <= 1.0
    assert "inputs" not in poker_face_realism(model, sides[:12], sides[12:], cfg, inputs=False)
