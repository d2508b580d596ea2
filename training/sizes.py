"""The model sizes, as data, and the factories that build PF-ViT at each (:mod:`training.model`)."""

from __future__ import annotations

from typing import Any

from training.config import PFViTConfig
from training.model import PFViT

# ----------------------------------------------------------------------------- factories
# The size variants, as data: one place for every default of every size (the command line
# reads the image size from here too).
MODEL_SIZES: dict[str, dict[str, Any]] = {
    # CPU-friendly: 64², patch 8, width 128, depth 4 (tests, smoke runs, the shipped default model).
    "micro": dict(
        image_size=64,
        patch_size=8,
        embed_dim=128,
        depth=4,
        num_heads=4,
        emotion_dim=32,
        decoder_dim=96,
        decoder_depth=2,
        decoder_heads=4,
        disc_dim=64,
        disc_depth=2,
        disc_heads=2,
        disc_patch_size=16,
    ),
    # ViT-Tiny encoder (224², patch 16, 192 wide, 12 deep, 3 heads).
    "tiny": dict(
        embed_dim=192,
        depth=12,
        num_heads=3,
        emotion_dim=64,
        decoder_dim=256,
        decoder_depth=4,
        decoder_heads=8,
        disc_dim=192,
        disc_depth=4,
        disc_heads=3,
    ),
    # ViT-Small encoder (224², patch 16, 384 wide, 12 deep, 6 heads).
    "small": dict(
        embed_dim=384,
        depth=12,
        num_heads=6,
        emotion_dim=128,
        decoder_dim=384,
        decoder_depth=4,
        decoder_heads=12,
        disc_dim=192,
        disc_depth=4,
        disc_heads=3,
    ),
    # ViT-Base encoder (224², patch 16, 768 wide, 12 deep, 12 heads).
    "base": dict(
        embed_dim=768,
        depth=12,
        num_heads=12,
        emotion_dim=256,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        disc_dim=384,
        disc_depth=6,
        disc_heads=6,
    ),
}


def model_config(size: str, **overrides: Any) -> PFViTConfig:
    """The config of size ``size`` (micro, tiny, small, base) with field overrides."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    return PFViTConfig(**{**MODEL_SIZES[size], **overrides})


def pfvit_micro(**overrides: Any) -> PFViT:
    """CPU-friendly: 64², patch 8, width 128, depth 4 (tests, smoke runs)."""
    return PFViT(model_config("micro", **overrides))


def pfvit_tiny(**overrides: Any) -> PFViT:
    """ViT-Tiny encoder (224², patch 16, 192 wide, 12 deep, 3 heads)."""
    return PFViT(model_config("tiny", **overrides))


def pfvit_small(**overrides: Any) -> PFViT:
    """ViT-Small encoder (224², patch 16, 384 wide, 12 deep, 6 heads)."""
    return PFViT(model_config("small", **overrides))


def pfvit_base(**overrides: Any) -> PFViT:
    """ViT-Base encoder (224², patch 16, 768 wide, 12 deep, 12 heads)."""
    return PFViT(model_config("base", **overrides))


FACTORIES = {"micro": pfvit_micro, "tiny": pfvit_tiny, "small": pfvit_small, "base": pfvit_base}


def build_model(name: str, **overrides: Any) -> PFViT:
    """Model from a size name (micro, tiny, small, base) and config overrides."""
    return PFViT(model_config(name, **overrides))
