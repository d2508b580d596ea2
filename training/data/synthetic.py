"""Procedural stand-in data with a known poker face, for smoke runs and tests (not faces)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

SYNTHETIC_LABELS = ("happiness", "sadness", "surprise", "neutral")


class SyntheticFaces(Dataset):
    """A grey disc on a dark ground with a class-specific bright band; the same image without
    the band is its ``poker_face``, so every term of the PF-ViT stage runs.

    Item ``i`` is a pure function of ``(seed, i)``; its label is ``i % len(labels)``, and the
    class named "neutral" has no band (its image is its poker face).

    Args:
        length: number of items.
        image_size: side in pixels.
        seed: varies the per-item tone and noise.
        labels: class names; at most 6 (the band's channel and row come from the index).
        soft: also give ``soft_label``, 0.8 on the class and the rest spread evenly.
    """

    def __init__(
        self, length: int, image_size: int, seed: int = 0, labels: Sequence[str] = SYNTHETIC_LABELS, soft: bool = False
    ) -> None:
        if length <= 0 or image_size < 8:
            raise ValueError("length must be positive and image_size at least 8")
        if not 0 < len(labels) <= 6:
            raise ValueError(f"1 to 6 labels, got {len(labels)}")
        self.length = length
        self.image_size = image_size
        self.seed = seed
        self.labels = list(labels)
        self.soft = soft

    @property
    def targets(self) -> list[int]:
        return [i % len(self.labels) for i in range(self.length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s = self.image_size
        label = index % len(self.labels)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        tone = 0.4 + 0.3 * torch.rand(3, 1, 1, generator=g)
        disc = ((xx**2 / 0.6 + yy**2 / 0.8) < 1).float()
        poker = (0.1 + disc * tone + 0.03 * torch.rand(3, s, s, generator=g)).clamp(0, 1)
        image = poker.clone()
        if self.labels[label] != "neutral":
            # The "expression": a bright band whose channel and height depend on the class.
            row = int(s * (0.25 + 0.1 * label))
            image[label % 3, row : row + max(2, s // 8), s // 4 : 3 * s // 4] = 1.0
        item = {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "poker_face": poker,
            "has_poker_face": torch.tensor(True),
        }
        if self.soft:
            soft = torch.full((len(self.labels),), 0.2 / max(1, len(self.labels) - 1))
            soft[label] = 0.8
            item["soft_label"] = soft
        return item
