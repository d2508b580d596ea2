"""A classifier two-sample test (C2ST): can a fresh classifier tell two sets of faces apart?

The yardstick for poker faces: a poker face should be a face no one can tell from a real
neutral face. A small CNN that neither the generator nor any other part of the model has seen
is trained to separate set A (poker faces of expressive faces) from set B (real neutral faces,
never passed through the generator), and scored by cross-validated ROC AUC on the folds it did
not train on: 0.5 when the sets cannot be told apart, 1.0 when every face gives itself away.
The same test on the untouched expressive inputs against the neutral faces is the baseline: the
expression alone is that easy to see. Poker faces that score *above* that baseline are easier
to tell from a neutral face than the expressive originals are (a painted bar does that).

Everything here is a pure function of the two arrays and a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class C2STConfig:
    """The classifier and its training. Args: ``folds`` for cross-validation, ``epochs`` and
    ``batch_size`` per fold, ``lr`` for AdamW, ``width`` the first layer's channels, ``seed`` for
    the folds, the initialisation and the batches."""

    folds: int = 5
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 16
    seed: int = 0


@dataclass(frozen=True)
class C2STResult:
    auc: float  # mean over folds
    fold_aucs: tuple[float, ...]
    n_a: int
    n_b: int

    def as_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc,
            "auc_sd": float(np.std(self.fold_aucs)),
            "fold_aucs": list(self.fold_aucs),
            "n_a": self.n_a,
            "n_b": self.n_b,
        }


class _Critic(nn.Module):
    """Four 3x3 convolution blocks, each halving the side, then a linear logit."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for k in range(4):
            c_out = width * 2**k
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N, 1, H, W] in [0, 1]
        return self.fc(self.features(x - 0.5).mean(dim=(2, 3)))[:, 0]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 positive, 0 negative), by the rank statistic
    (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def to_grey01(faces: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` or ``(N, H, W)`` uint8 -> ``[N, 1, H, W]`` float luma in [0, 1]."""
    arr = np.asarray(faces, dtype=np.float32) / 255.0
    if arr.ndim == 4:
        arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return torch.from_numpy(arr[:, None])


def _train_critic(x: torch.Tensor, y: torch.Tensor, cfg: C2STConfig, seed: int) -> _Critic:
    torch.manual_seed(seed)
    model = _Critic(cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    # A training fold smaller than a batch is one batch (a fold can never be skipped whole: the
    # loop below would never end).
    batch_size = min(cfg.batch_size, len(x))
    steps = cfg.epochs * max(1, len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    model.train()
    done = 0
    while done < steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            batch = x[idx]
            # Mirror images: a face and its mirror are equally real.
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = F.binary_cross_entropy_with_logits(model(batch), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
            if done >= steps:
                break
    return model.eval()


def c2st(set_a: np.ndarray, set_b: np.ndarray, cfg: C2STConfig = C2STConfig()) -> C2STResult:
    """Cross-validated ROC AUC of a fresh classifier telling ``set_a`` from ``set_b``.

    Both sets are ``(N, H, W[, 3])`` uint8 faces of one size. Folds are stratified (each holds
    the same share of either set); each fold's classifier trains on the other folds only.
    """
    if set_a.shape[1:3] != set_b.shape[1:3]:
        raise ValueError(f"the two sets differ in size: {set_a.shape[1:3]} and {set_b.shape[1:3]}")
    if min(len(set_a), len(set_b)) < cfg.folds:
        raise ValueError(f"each set needs at least {cfg.folds} faces")
    x = torch.cat([to_grey01(set_a), to_grey01(set_b)])
    y = torch.cat([torch.ones(len(set_a)), torch.zeros(len(set_b))])
    rng = np.random.default_rng(cfg.seed)
    fold_of = np.empty(len(x), dtype=np.int64)
    for part in (np.arange(len(set_a)), len(set_a) + np.arange(len(set_b))):
        fold_of[rng.permutation(part)] = np.arange(len(part)) % cfg.folds
    aucs = []
    for fold in range(cfg.folds):
        test = fold_of == fold
        critic = _train_critic(x[~test], y[~test], cfg, cfg.seed * 1000 + fold)
        with torch.no_grad():
            scores = torch.cat([critic(x[test][i : i + 256]) for i in range(0, int(test.sum()), 256)]).numpy()
        aucs.append(roc_auc(scores, y[test].numpy()))
    return C2STResult(auc=float(np.mean(aucs)), fold_aucs=tuple(aucs), n_a=len(set_a), n_b=len(set_b))
