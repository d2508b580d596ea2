"""Datasets, augmentations and sampling for PF-ViT training.

``build_dataset(kind, root, split, image_size, augment)`` is the one entry point the
training code uses; the dataset classes live in ``datasets.py``. See ``docs/datasets.md``
for the layouts each kind expects.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from training.data.datasets import (
    AFFECTNET_LABELS,
    FERPLUS_LABELS,
    RAFDB_LABELS,
    RAFDB,
    AffectNet,
    FaceDataset,
    FERPlus,
    ImageFolder,
    ferplus_majority,
    ferplus_soft_target,
    five_points_from_68,
)
from training.data.sampling import balanced_sampler, class_counts, sample_weights
from training.data.transforms import FaceTransform

DATASET_KINDS = ("rafdb", "ferplus", "affectnet", "folder")

__all__ = [
    "AFFECTNET_LABELS",
    "DATASET_KINDS",
    "FERPLUS_LABELS",
    "RAFDB_LABELS",
    "RAFDB",
    "AffectNet",
    "FaceDataset",
    "FaceTransform",
    "FERPlus",
    "ImageFolder",
    "balanced_sampler",
    "build_dataset",
    "class_counts",
    "ferplus_majority",
    "ferplus_soft_target",
    "five_points_from_68",
    "sample_weights",
]


def build_dataset(
    kind: str,
    root: str | Path,
    split: str,
    image_size: int,
    augment: bool,
    **options: object,
) -> Dataset:
    """Build one split of a dataset.

    Args:
        kind: "rafdb", "ferplus", "affectnet" or "folder" ("affectnet7"/"affectnet8"
            are shorthands for ``kind="affectnet", num_classes=7/8``).
        root: the dataset's folder (layouts in ``docs/datasets.md``).
        split: "train", "val" or "test" (for "folder": the sub-folder name).
        image_size: side of the square ``image`` tensors.
        augment: apply the training augmentations (``FaceTransform``).
        **options: extra keyword arguments of the dataset class, e.g. ``num_classes=7``
            or ``face="box"`` for AffectNet, ``source="pixels"`` for FERPlus.

    Raises:
        ValueError: unknown kind or split, missing files, malformed label files.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset root {root} is not a folder")
    transform = FaceTransform(image_size=image_size, augment=augment)
    key = kind.lower()
    if key in ("affectnet7", "affectnet8"):
        options.setdefault("num_classes", int(key[-1]))
        key = "affectnet"
    if key == "rafdb":
        return RAFDB(root, split, transform, **options)
    if key == "ferplus":
        return FERPlus(root, split, transform, **options)
    if key == "affectnet":
        return AffectNet(root, split, transform, **options)
    if key == "folder":
        return ImageFolder(root, split, transform, **options)
    raise ValueError(f"unknown dataset kind {kind!r}; use one of {', '.join(DATASET_KINDS)}")
