"""Shared fixtures for the torch side: a tiny dataset of the loader contract, micro configs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

torch_available = pytest.importorskip("torch")

IMAGE_SIZE = 32


class TinyFaces(Dataset):
    """Items of the dataset contract: ``image`` (3, H, W) in [0, 1], ``label``, ``poker_face``.

    Each class brightens one channel band; the unmarked image is the true poker face.
    """

    labels = ["happiness", "sadness", "neutral"]

    def __init__(self, size: int = 16, image_size: int = IMAGE_SIZE, seed: int = 0, soft: bool = False) -> None:
        self.size, self.image_size, self.seed, self.soft = size, image_size, seed, soft

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        label = index % len(self.labels)
        poker = 0.2 + 0.3 * torch.rand(3, self.image_size, self.image_size, generator=g)
        image = poker.clone()
        if self.labels[label] != "neutral":
            image[label, self.image_size // 2 :, :] += 0.4
        item = {"image": image.clamp(0, 1), "label": torch.tensor(label), "poker_face": poker}
        if self.soft:
            soft = torch.full((len(self.labels),), 0.1)
            soft[label] = 0.8
            item["soft_label"] = soft
        return item


def micro_overrides() -> dict:
    """Smaller than ``pfvit_micro`` (32², patch 8): the whole suite runs on 2 shared cores."""
    return dict(image_size=IMAGE_SIZE, patch_size=8, embed_dim=64, depth=2, num_heads=2, emotion_dim=16,
                decoder_dim=32, decoder_depth=1, decoder_heads=2, disc_dim=32, disc_depth=1, disc_heads=2, disc_patch_size=8)


@pytest.fixture
def tiny_faces() -> TinyFaces:
    return TinyFaces()
