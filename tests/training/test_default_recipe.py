"""The default-model recipe end to end at toy size: render, pre-train, PF-ViT stage, export, evaluate, publish.

At this size (8 steps per stage on CPU) recognition is still at chance (measured 0.125-0.14 on 8
classes, also with 32 steps), so what the test holds the recipe to is what a broken recipe
would lose: both stages learning (their own losses fall), the data spec it records parsing
back to the data it used, the published numbers being those of the exported files, and the
true poker faces staying close to their inputs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from service.card import load_card, verify_files
from training.data import DataSpec
from training.default_model import QUICK, DefaultModelConfig, run


def _steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"summary"' not in line]


def test_recipe_runs_end_to_end(tmp_path: Path) -> None:
    cfg = replace(
        DefaultModelConfig(),
        **{**QUICK, "train_size": 256, "val_size": 64, "test_size": 64, "batch_size": 32},
        out_dir=str(tmp_path / "run"),
        model_dir=str(tmp_path / "model"),
        docs_dir=str(tmp_path / "docs"),
        render_workers=1,
    )
    metrics = run(cfg)

    pre, train = _steps(tmp_path / "run" / "pretrain"), _steps(tmp_path / "run" / "train")
    assert len(pre) == len(train) == 8
    assert sum(r["loss"] for r in pre[-2:]) < 0.9 * sum(r["loss"] for r in pre[:2])  # MAE learns
    # Every rendered face has its true poker face, and the poker faces move towards them.
    assert all(r["poker_sup"] > 0 for r in train)
    assert sum(r["poker_sup"] for r in train[-2:]) < 0.85 * sum(r["poker_sup"] for r in train[:2])
    assert sum(r["d"] for r in train[-2:]) < sum(r["d"] for r in train[:2])  # D learns in its own step

    card = load_card(cfg.model_dir)
    verify_files(card, cfg.model_dir)
    assert card.input.size == [64, 64] and card.labels[0] == "neutral"
    assert DataSpec.parse(card.training["recipe"]["stage_config"]["data"]) == cfg.data
    assert card.training["recipe"]["model_config"]["poker_mode"] == cfg.poker_mode
    published = card.training["metrics"]
    assert published["num_samples"] == 64
    assert published["accuracy"] == metrics["accuracy"] and published["macro_f1"] == metrics["macro_f1"]
    assert published["poker_face"]["baseline_psnr_db"] > 20  # inputs resemble their poker faces
    assert 0.0 <= metrics["accuracy"] <= 1.0
    report = (tmp_path / "docs" / "rendered-model.md").read_text()
    assert "Held-out results" in report and f"{100 * metrics['accuracy']:.2f} %" in report
    assert (tmp_path / "docs" / "rendered-model-samples.png").stat().st_size > 0
