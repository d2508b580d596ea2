"""The default-model recipe end to end at toy size: render, pre-train, PF-ViT stage, export, evaluate, publish."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from service.card import load_card, verify_files
from training.default_model import QUICK, DefaultModelConfig, run


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
    card = load_card(cfg.model_dir)
    verify_files(card, cfg.model_dir)
    assert card.input.size == [64, 64] and card.labels[0] == "neutral"
    assert card.training["metrics"]["num_samples"] == 64
    assert card.training["metrics"]["poker_face"]["baseline_psnr_db"] > 20  # inputs resemble their poker faces
    assert 0.0 <= metrics["accuracy"] <= 1.0
    report = (tmp_path / "docs" / "default-model.md").read_text()
    assert "Held-out results" in report and f"{100 * metrics['accuracy']:.2f} %" in report
    assert (tmp_path / "docs" / "default-model-samples.png").stat().st_size > 0
