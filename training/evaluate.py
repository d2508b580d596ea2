"""Recognition metrics and the evaluation loop's outputs (JSON, confusion matrix, sample grid)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.model import PFViT
from training.plots import confusion_matrix_png, image_grid_png


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows true class, columns predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(matrix: np.ndarray, labels: list[str], support: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall), mean class accuracy and macro-F1 from a confusion matrix.

    Classes absent from the evaluation set are left out of the macro averages (their recall is
    undefined) and reported as ``None``.

    Args:
        support: samples per true class when some have no prediction at all (a face the
            detector missed): they count as wrong. Default: the matrix's row sums.
    """
    tp = np.diag(matrix).astype(np.float64)
    support = (matrix.sum(axis=1) if support is None else np.asarray(support)).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    total = support.sum()
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "num_samples": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": {name: (float(recall[i]) if present[i] else None) for i, name in enumerate(labels)},
        "per_class_f1": {name: (float(f1[i]) if present[i] else None) for i, name in enumerate(labels)},
        "support": {name: int(support[i]) for i, name in enumerate(labels)},
    }


@torch.no_grad()
def evaluate(
    model: PFViT,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    out_dir: str | Path | None = None,
    max_batches: int = 0,
    num_samples: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Run recognition over a dataset; write metrics, confusion matrix and a sample grid.

    Args:
        model: the unwrapped PF-ViT (put in eval mode here).
        batches: a data loader yielding the dataset contract's dicts.
        device: where to run.
        out_dir: if given, writes ``metrics.json``, ``confusion.png`` and ``samples.png``
            (input | reconstruction | poker face | true poker face when the data has one).
        max_batches: cap (0 = all).
        num_samples: rows of the sample grid.
        progress: show a tqdm bar.

    Returns:
        The metrics dict (also in ``metrics.json``), with ``confusion_matrix`` as nested lists.
    """
    was_training = model.training
    model.eval()
    labels = model.config.labels or [str(i) for i in range(model.config.num_classes)]
    y_true, y_pred = [], []
    grid: list[tuple[str, np.ndarray]] | None = None
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i, batch in enumerate(tqdm(batches, desc="eval", disable=not progress, leave=False)):
        if max_batches and i >= max_batches:
            break
        images01 = batch["image"].to(device, non_blocking=True)
        x = model.normalise(images01)
        with autocast:
            z = model.forward_features(x)
            z_e, z_p = model.separate(z)
            logits, _ = model.forward_head(z_e)
        labelled = batch["label"] >= 0
        y_true.append(batch["label"][labelled].numpy())
        y_pred.append(logits.float().argmax(dim=1).cpu()[labelled].numpy())
        if grid is None and out_dir is not None:
            k = min(num_samples, x.shape[0])
            with autocast:
                rec_model = model.generate(z[:k])
                rec = model.denormalise(rec_model.float())
                poker = model.denormalise(model.synthesize_poker(x[:k], z[:k], z_p[:k], rec_model).float())
            grid = [
                ("input", images01[:k].float().cpu().numpy()),
                ("recon", rec.cpu().numpy()),
                ("poker", poker.cpu().numpy()),
            ]
            if "poker_face" in batch:
                grid.append(("true", batch["poker_face"][:k].float().numpy()))
    model.train(was_training)
    true = np.concatenate(y_true) if y_true else np.zeros(0, dtype=np.int64)
    pred = np.concatenate(y_pred) if y_pred else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(true.astype(np.int64), pred.astype(np.int64), len(labels))
    metrics = classification_metrics(matrix, labels)
    metrics["labels"] = list(labels)
    metrics["confusion_matrix"] = matrix.tolist()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        confusion_matrix_png(matrix, labels, out / "confusion.png")
        if grid is not None:
            image_grid_png(grid, out / "samples.png")
    return metrics
