"""What the photo-model recipes share: resuming a stage from its own files and keeping the time
each stage took, so that an interrupted recipe reruns to the same model and reports what the
whole recipe cost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.checkpoint import load_checkpoint
from training.data import align_dataset

# The shipped detector, wherever a recipe is run from.
MTCNN_DIR = Path(__file__).resolve().parent.parent / "models" / "mtcnn"


def stage_seconds(folder: Path, spent: float) -> float:
    """The measured time of a finished stage, kept in its ``seconds.json``: ``spent`` when this
    run finished it, else what the run that finished it recorded (a rerun that only finds the
    stage done, or re-scans it, adds nothing). A stage resumed after an interruption counts the
    finishing run's time only."""
    record = folder / "seconds.json"
    if record.is_file():
        return float(json.loads(record.read_text())["seconds"])
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"seconds": round(spent, 1)}) + "\n")
    return spent


def resume_or_skip(run_dir: Path, epochs: int) -> tuple[str, bool]:
    """``(resume path, finished)`` for a stage whose checkpoints live in ``run_dir``."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return "", False
    done = int(load_checkpoint(last)["epoch"])
    return ("", True) if done >= epochs else (str(last), False)


def recipe_flags(ap: argparse.ArgumentParser) -> None:
    """The flags every model recipe takes besides its config's fields."""
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes and one epoch per stage (a smoke run of the same path)"
    )
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="skip training: re-score the model in --model-dir and rewrite its numbers (card, report, "
        "pictures); timings are kept from the last run's metrics.json, else from the card",
    )


def align_photos(source: Path, out: Path, size: int, pad_px: int, upscale: float, threads: int) -> None:
    """Every photo below ``source`` through the service's detector and aligner (resumable): each
    edge-padded by ``pad_px`` and upscaled, as a photo of it reaches the service; faces the
    detector misses get the detected faces' mean transform."""
    argv = ["--size", str(size), "--pad", str(pad_px), "--upscale", str(upscale), "--fallback", "mean"]
    align_dataset.main([str(source), str(out), *argv, "--models", str(MTCNN_DIR), "--threads", str(threads)])
