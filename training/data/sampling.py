"""Class-balanced sampling for imbalanced expression datasets.

AffectNet's training set is about half happiness and under 2 % contempt; RAF-DB and FERPlus
are skewed too. Drawing samples with inverse-frequency weights shows every class about
equally often per epoch, which the noisy, imbalanced AffectNet especially needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler, WeightedRandomSampler


def class_counts(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Samples per class, ``(num_classes,)`` int64. Unlabeled samples (-1) are not counted."""
    t = torch.as_tensor(list(targets), dtype=torch.int64)
    if t.numel() and int(t.max()) >= num_classes:
        raise ValueError(f"a target is {int(t.max())}, outside {num_classes} classes")
    return torch.bincount(t[t >= 0], minlength=num_classes)


def sample_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-sample weight ``1 / count(class)``, ``(N,)`` float64; 0 for unlabeled samples.

    Each class then carries the same total weight, so a weighted draw picks classes
    uniformly. An unlabeled sample gets weight 0: it has no class to balance.
    """
    t = torch.as_tensor(list(targets), dtype=torch.int64)
    counts = class_counts(t.tolist(), num_classes).double()
    per_class = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    weights = torch.zeros(t.shape, dtype=torch.float64)
    labelled = t >= 0
    weights[labelled] = per_class[t[labelled]]
    return weights


def balanced_sampler(
    targets: Sequence[int],
    num_classes: int,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A ``WeightedRandomSampler`` drawing classes equally often, with replacement.

    Args:
        targets: class index per sample (a dataset's ``targets``), -1 for unlabeled.
        num_classes: number of classes (``len(dataset.labels)``).
        num_samples: draws per epoch; defaults to the number of labelled samples so an
            "epoch" keeps its usual length.
        generator: seeds the draws for reproducible runs.
    """
    weights = sample_weights(targets, num_classes)
    labelled = int((weights > 0).sum())
    if labelled == 0:
        raise ValueError("no labelled samples to balance")
    return WeightedRandomSampler(
        weights.tolist(), num_samples=num_samples or labelled, replacement=True, generator=generator
    )


class BalancedSampler(Sampler[int]):
    """Class-balanced draws for training runs: the weights of :func:`sample_weights`, drawn with
    replacement from a generator seeded by ``(seed, epoch)``, so a resumed run replays the same
    order (as ``DistributedSampler`` does); each of ``num_replicas`` processes takes every
    ``num_replicas``-th draw from ``rank`` on.

    Args:
        targets: class index per sample (-1 for unlabeled, never drawn).
        num_classes: number of classes.
        num_replicas, rank: the process group's size and this process's rank.
        seed: base seed (the same on every rank).
        num_samples: draws per epoch over all ranks; defaults to the number of labelled samples.
    """

    def __init__(
        self,
        targets: Sequence[int],
        num_classes: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        self.weights = sample_weights(targets, num_classes)
        labelled = int((self.weights > 0).sum())
        if labelled == 0:
            raise ValueError("no labelled samples to balance")
        self.total = num_samples or labelled
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.per_rank = self.total // num_replicas  # equal on every rank, as DDP needs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.num_replicas, replacement=True, generator=g)
        return iter(draws[self.rank :: self.num_replicas].tolist())
