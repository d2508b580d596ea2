"""Recognition metrics, with and without faces that got no prediction at all."""

import numpy as np
import pytest

pytest.importorskip("torch")

from training.evaluate import classification_metrics, confusion_matrix
from training.served_eval import NOT_FOUND, score

LABELS = ["anger", "happiness", "neutral"]


def test_metrics_from_a_confusion_matrix() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2]), 3)
    m = classification_metrics(matrix, LABELS)
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["per_class_accuracy"] == {"anger": 0.5, "happiness": 1.0, "neutral": 1.0}
    # anger F1 2/3, happiness (precision 2/3, recall 1) 0.8, neutral 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)


def test_undetected_faces_count_as_wrong() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, NOT_FOUND, 1, 1, 2, NOT_FOUND])
    m = score(y_true, y_pred, LABELS)
    assert m["num_samples"] == 6 and m["detected"] == 4
    assert m["accuracy"] == pytest.approx(4 / 6)  # not 4 / 4
    assert m["per_class_accuracy"] == {"anger": 0.5, "happiness": 1.0, "neutral": 0.5}
    assert m["support"] == {"anger": 2, "happiness": 2, "neutral": 2}
    assert np.array(m["confusion_matrix"]).sum() == 4  # misses are in no column
