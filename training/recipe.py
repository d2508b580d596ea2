"""What the photo-model recipes share: resuming a stage from its own files and keeping the time
each stage took, so that an interrupted recipe reruns to the same model and reports what the
whole recipe cost."""

from __future__ import annotations

import json
from pathlib import Path

from training.checkpoint import load_checkpoint


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
