"""Post-hoc logit adjustment (``logits - tau * log(prior)``): scores of a checkpoint, the
choice of tau on validation faces by the balance of accuracy and macro recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.checkpoint import model_from_checkpoint
from training.data.ferplus import FERPlus


@torch.no_grad()
def checkpoint_logits(checkpoint: str | Path, faces: FERPlus, mirror_average: bool, batch: int = 256) -> np.ndarray:
    """``(N, K)`` logits of a checkpoint's E, S_e and H on ``faces`` (no augmentation), averaged
    with the mirror image when the exported graph does so."""
    model, _ = model_from_checkpoint(checkpoint)
    model.eval()
    out = []
    for start in range(0, len(faces), batch):
        x = torch.stack([faces[i]["image"] for i in range(start, min(len(faces), start + batch))])
        views = [x, x.flip(-1)] if mirror_average else [x]
        logits = []
        for v in views:
            z_e, _ = model.separate(model.forward_features(model.normalise(v)))
            logits.append(model.forward_head(z_e)[0])
        out.append(torch.stack(logits).mean(0))
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
