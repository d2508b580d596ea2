"""The FERPlus recipe end to end at toy size, on stand-in faces cut from the fixture photo laid
out as FERPlus is (split folders with ``label.csv`` inside ``data/``, ``fer2013new.csv`` beside):
align, MAE, the PF-ViT stage, the editor, the logit adjustment, export, the judge, the
separation ablation, scoring through the service, the report, and ``--evaluate-only`` giving the
same numbers from the shipped files alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from service.card import load_card
from service.vision.imaging import encode_png
from training import calibration, ferplus_model
from training.data.ferplus import FERPLUS_LABELS

REPO = Path(__file__).resolve().parents[2]
ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"
SPLITS = (("Training", "FER2013Train"), ("PublicTest", "FER2013Valid"), ("PrivateTest", "FER2013Test"))


def stand_in_ferplus(root: Path, per_class: int = 2) -> None:
    """48 px grey crops of the fixture face, jittered, ``per_class`` per class and split, each
    with ten votes for its class; and one blank picture per split that no detector finds."""
    grey = np.asarray(Image.open(ASTRONAUT).convert("L"))
    rng = np.random.default_rng(0)
    n = 0
    new_rows = []
    for usage, folder in SPLITS:
        (root / "data" / folder).mkdir(parents=True, exist_ok=True)
        label_rows = []
        for k in range(len(FERPLUS_LABELS)):
            for _ in range(per_class):
                dx, dy, grow = (int(v) for v in rng.integers(-8, 9, 3))
                crop = grey[50 + dy : 185 + dy + grow, 170 + dx : 280 + dx + grow]
                face = np.asarray(Image.fromarray(crop).resize((48, 48), Image.Resampling.BILINEAR))
                if k % 2:
                    face = face[:, ::-1]
                name = f"fer{n:07d}.png"
                (root / "data" / folder / name).write_bytes(encode_png(np.repeat(face[:, :, None], 3, axis=2)))
                votes = [0] * 10
                votes[k] = 10
                label_rows.append([name, "(0, 0, 48, 48)", *votes])
                new_rows.append([usage, name, *votes])
                n += 1
        name = f"fer{n:07d}.png"
        (root / "data" / folder / name).write_bytes(encode_png(np.full((48, 48, 3), 128, np.uint8)))
        label_rows.append([name, "(0, 0, 48, 48)", 10, *([0] * 9)])
        new_rows.append([usage, name, 10, *([0] * 9)])
        n += 1
        with (root / "data" / folder / "label.csv").open("w", newline="") as f:
            csv.writer(f).writerows(label_rows)
    with (root / "fer2013new.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", *FERPLUS_LABELS, "unknown", "NF"])
        w.writerows(new_rows)


@pytest.mark.slow
def test_recipe_at_toy_size(tmp_path: Path) -> None:
    data = tmp_path / "ferplus"
    stand_in_ferplus(data)

    def args(run: str) -> list[str]:
        return [
            "--ferplus",
            str(data),
            "--out-dir",
            str(tmp_path / run),
            "--model-dir",
            str(tmp_path / "model"),
            "--docs-dir",
            str(tmp_path / "docs"),
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--render-workers",
            "1",
            "--quick",
        ]

    assert ferplus_model.main(args("run")) == 0

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Every test face is accounted for, the blank one through the fallback transform.
    assert metrics["alignment"]["FER2013Test"]["fallback"] >= 1
    assert sum(metrics["alignment"]["FER2013Test"].values()) == 17
    assert metrics["label"]["aligned"]["num_samples"] == 17
    assert metrics["label"]["photos"]["num_samples"] == 17
    assert metrics["label"]["photos"]["detected"] < 17  # the blank picture: counted wrong, not dropped
    assert set(metrics["ablation"]) == {"with_separation", "without_separation"}
    assert metrics["calibration"]["tau"] in [r["tau"] for r in metrics["calibration"]["validation"]]
    card = load_card(tmp_path / "model")
    assert card.labels == FERPLUS_LABELS and "FERPlus" in card.training["data"]
    assert card.training["metrics"]["label"]["aligned"]["accuracy"] == metrics["label"]["aligned"]["accuracy"]
    assert (tmp_path / "model" / "judge.pt").is_file()
    assert card.training["recipe"]["model_config"]["poker_mode"] == "editor"
    report = (tmp_path / "docs" / "default-model.md").read_text()
    for needle in ("FERPlus", "label.csv", "macro recall", "separation", "PSNR", "research"):
        assert needle in report
    assert (tmp_path / "docs" / "default-model-confusion.png").stat().st_size > 0

    # The shipped files alone (a fresh run folder) give the same numbers.
    assert ferplus_model.main([*args("rescore"), "--evaluate-only"]) == 0
    rescored = json.loads((tmp_path / "rescore" / "metrics.json").read_text())
    for key in ("label", "new", "poker_face_ferplus", "judge", "poker_face_rendered"):
        assert rescored[key] == metrics[key], key


def test_logit_adjustment_is_chosen_on_the_balance_of_accuracy_and_recall() -> None:
    # Three classes, the last rare: unadjusted logits never predict it.
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    logits = np.zeros((10, 3))
    logits[:6, 0] = 2.0
    logits[6:9, 1] = 2.0
    logits[9] = [1.0, 0.0, 0.5]  # the rare face leans to class 0
    log_prior = np.log(np.array([0.6, 0.3, 0.1]))
    tau, table = calibration.choose_tau(logits, y, log_prior, [0.0, 1.0])
    assert [round(r["macro_recall"], 3) for r in table] == [0.667, 1.0]
    assert tau == 1.0
    # With nothing to gain, the smaller tau wins the tie.
    tau, _ = calibration.choose_tau(logits[:9], y[:9], log_prior, [0.0, 1.0])
    assert tau == 0.0


def test_floors_pick_the_tau_that_clears_both_with_the_most_room() -> None:
    # Accuracy and macro recall of four candidate taus, built as logits of a 100-face set.
    scores = {0.0: (0.84, 0.55), 0.5: (0.82, 0.63), 0.75: (0.80, 0.66), 1.0: (0.70, 0.70)}
    table = iter(scores.values())
    from unittest import mock

    with mock.patch.object(calibration, "balanced_scores", side_effect=lambda *a: next(table)):
        tau, rows = calibration.choose_tau(np.zeros((4, 2)), np.zeros(4), np.zeros(2), list(scores), (0.80, 0.60))
    # 0.5 clears both by 2 points and 3; 0.75 by 0 and 6: the common margin is 0.5's.
    assert tau == 0.5 and [r["tau"] for r in rows] == list(scores)
    table = iter(scores.values())
    with mock.patch.object(calibration, "balanced_scores", side_effect=lambda *a: next(table)):
        tau, _ = calibration.choose_tau(np.zeros((4, 2)), np.zeros(4), np.zeros(2), list(scores), (0.90, 0.60))
    assert tau == 0.75  # no tau reaches 90 %: the best mean of the two (0.73)
