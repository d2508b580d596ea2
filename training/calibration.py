"""Post-hoc logit adjustment (``logits - tau * log(prior)``): scores of a checkpoint, the
choice of tau on validation faces by the balance of accuracy and macro recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.checkpoint import model_from_checkpoint
from training.data.ferplus import FERPlus
from training.export import RecognitionGraph


@torch.no_grad()
def checkpoint_logits(
    checkpoint: str | Path, faces: FERPlus, mirror_average: bool, shift_px: int = 0, batch: int = 256
) -> np.ndarray:
    """``(N, K)`` logits of a checkpoint on ``faces`` (no augmentation) as its exported
    recognition graph computes them (:class:`~training.export.RecognitionGraph`, with the same
    test-time augmentation)."""
    model, _ = model_from_checkpoint(checkpoint)
    graph = RecognitionGraph(model.eval(), mirror_average, shift_px).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(faces), batch):
            x = torch.stack([faces[i]["image"] for i in range(start, min(len(faces), start + batch))])
            out.append(graph(model.normalise(x))[0])
    return torch.cat(out).numpy()


def balanced_scores(logits: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(accuracy, macro recall) of ``logits.argmax`` against ``y``."""
    pred = logits.argmax(1)
    recalls = [float((pred[y == k] == k).mean()) for k in range(num_classes) if (y == k).any()]
    return float((pred == y).mean()), float(np.mean(recalls))


def choose_tau(
    logits: np.ndarray,
    y: np.ndarray,
    log_prior: np.ndarray,
    taus: list[float],
    floors: tuple[float, float] | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """The tau of ``logits - tau * log_prior`` chosen on ``y``, and every candidate's scores.

    With ``floors`` (accuracy, macro recall): among the taus that reach both, the one that
    clears them by the largest common margin, ``min(accuracy - floor, macro recall - floor)``:
    the operating point the service's requirements ask for, with the most room on both. Without
    floors, or when no tau reaches both, the best mean of accuracy and macro recall. Ties: the
    smaller tau.
    """
    table = []
    for tau in taus:
        acc, macro = balanced_scores(logits - tau * log_prior, y, logits.shape[1])
        table.append({"tau": tau, "accuracy": acc, "macro_recall": macro})
    if floors is not None:
        margins = [(min(r["accuracy"] - floors[0], r["macro_recall"] - floors[1]), r) for r in table]
        clearing = [(m, r) for m, r in margins if m >= 0]
        if clearing:
            best = max(clearing, key=lambda mr: (round(mr[0], 6), -mr[1]["tau"]))[1]
            return float(best["tau"]), table
    best = max(table, key=lambda r: (round(0.5 * (r["accuracy"] + r["macro_recall"]), 6), -r["tau"]))
    return float(best["tau"]), table
