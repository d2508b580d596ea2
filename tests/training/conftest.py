"""Shared fixtures for the torch side: tiny synthetic data of the loader contract, micro configs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from training.data.synthetic import SyntheticFaces

IMAGE_SIZE = 32
TINY_LABELS = ("happiness", "sadness", "neutral")


def tiny_faces(length: int = 16, seed: int = 0, soft: bool = False) -> SyntheticFaces:
    """``length`` synthetic 32 px items over three classes (one of them neutral)."""
    return SyntheticFaces(length, IMAGE_SIZE, seed=seed, labels=TINY_LABELS, soft=soft)


def micro_overrides() -> dict:
    """Smaller than ``pfvit_micro`` (32², patch 8): the whole suite runs on 2 shared cores."""
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        emotion_dim=16,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        disc_dim=32,
        disc_depth=1,
        disc_heads=2,
        disc_patch_size=8,
    )


def micro_arch() -> str:
    """:func:`micro_overrides` as a stage config's ``arch`` text."""
    return ",".join(f"{k}={v}" for k, v in micro_overrides().items())
