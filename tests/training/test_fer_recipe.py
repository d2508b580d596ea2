"""The FER2013 recipe end to end at toy size, on stand-in faces cut from the fixture photo:
align, judge, MAE, the joint PF-ViT stage, the editor stage, export, scoring through the service, the report,
and ``--evaluate-only`` giving the same numbers from the shipped files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from service.card import load_card
from service.vision.imaging import encode_png
from training import fer_model
from training.data.fer2013 import FER2013_FOLDERS

REPO = Path(__file__).resolve().parents[2]
ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"


def stand_in_fer2013(root: Path) -> None:
    """FER2013's image-folder form: 48 px grey crops of the fixture face, jittered, 2 per class and
    split, and one blank picture per split that no detector finds (the fallback path)."""
    rgb = np.asarray(Image.open(ASTRONAUT).convert("L"))
    rng = np.random.default_rng(0)
    n = 0
    for usage, folder in (("Training", "train"), ("PublicTest", "validation"), ("PrivateTest", "test")):
        for k, name in enumerate(FER2013_FOLDERS):
            for _ in range(2):
                dx, dy, grow = (int(v) for v in rng.integers(-8, 9, 3))
                crop = rgb[50 + dy : 185 + dy + grow, 170 + dx : 280 + dx + grow]
                face = np.asarray(Image.fromarray(crop).resize((48, 48), Image.Resampling.BILINEAR))
                if k % 2:
                    face = face[:, ::-1]
                path = root / folder / name / f"{usage}_{n}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode_png(np.repeat(face[:, :, None], 3, axis=2)))
                n += 1
        blank = root / folder / "neutral" / f"{usage}_{n}.png"
        blank.write_bytes(encode_png(np.full((48, 48, 3), 128, np.uint8)))
        n += 1


@pytest.mark.slow
def test_recipe_at_toy_size(tmp_path: Path) -> None:
    data = tmp_path / "fer2013"
    stand_in_fer2013(data)

    def args(run: str) -> list[str]:
        return [
            "--fer2013",
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

    assert fer_model.main(args("run")) == 0

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Every face of every split is accounted for: 14 detected crops and 1 blank on the fallback.
    assert metrics["alignment"]["PrivateTest"]["fallback"] >= 1
    assert sum(metrics["alignment"]["PrivateTest"].values()) == 15
    assert metrics["photos"]["num_samples"] == 15
    assert metrics["photos"]["detected"] < 15  # the blank picture has no face: counted wrong, not dropped
    card = load_card(tmp_path / "model")
    assert card.labels[-1] == "neutral" and "FER2013" in card.training["data"]
    assert card.training["metrics"]["photos"]["accuracy"] == metrics["photos"]["accuracy"]
    assert (tmp_path / "model" / "judge.pt").is_file()
    # The shipped poker faces come from the editor stage, on top of the PF-ViT stage's model.
    assert (
        card.training["recipe"]["stage"] == "editor"
        and card.training["recipe"]["model_config"]["poker_mode"] == "editor"
    )
    assert metrics["timings"]["editor_s"] > 0
    report = (tmp_path / "docs" / "default-model.md").read_text()
    for needle in ("Faces found", "PrivateTest", "judge", "PSNR", "research"):
        assert needle in report
    assert (tmp_path / "docs" / "default-model-samples.png").stat().st_size > 0

    # The shipped files alone (a fresh run folder) give the same numbers.
    assert fer_model.main([*args("rescore"), "--evaluate-only"]) == 0
    rescored = json.loads((tmp_path / "rescore" / "metrics.json").read_text())
    for key in ("photos", "aligned_upload", "poker_face_fer2013", "judge", "poker_face_rendered"):
        assert rescored[key] == metrics[key], key


def test_a_finished_stage_keeps_the_time_it_took(tmp_path) -> None:
    """A rerun that finds a stage done (or re-scans it) reports the finishing run's time and adds nothing."""
    from training.recipe import stage_seconds

    assert stage_seconds(tmp_path / "align", 930.04) == 930.04
    assert stage_seconds(tmp_path / "align", 12.5) == 930.0
    assert stage_seconds(tmp_path / "align", 0.2) == 930.0
