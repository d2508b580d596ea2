"""Datasets, augmentations and sampling for PF-ViT training.

A data set is named by a data spec (``rafdb:/data/RAF-DB``, ``rendered:seed=0,size=64,n=16000``;
:mod:`training.data.spec`) and built with ``build_data(spec, split, image_size, augment)``, the
one path the command line, the default recipe and the tests use; ``build_dataset`` is the same
call with the spec given as Python values. The dataset classes live in ``datasets.py``; see
``docs/datasets.md`` for the layouts each kind expects.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from training.data.datasets import (
    AFFECTNET_LABELS,
    RAFDB,
    RAFDB_LABELS,
    AffectNet,
    FaceDataset,
    ImageFolder,
    five_points_from_68,
)
from training.data.ferplus import FERPLUS_LABELS, FERPlus, ferplus_majority, ferplus_soft_target
from training.data.sampling import BalancedSampler, balanced_sampler, class_counts, sample_weights
from training.data.spec import DATA_KINDS, DataKind, DataSpec, build_data, disk_kind
from training.data.synthetic import SyntheticFaces
from training.data.transforms import FaceTransform

__all__ = [
    "AFFECTNET_LABELS",
    "DATA_KINDS",
    "FERPLUS_LABELS",
    "RAFDB_LABELS",
    "RAFDB",
    "AffectNet",
    "BalancedSampler",
    "DataKind",
    "DataSpec",
    "FaceDataset",
    "FaceTransform",
    "FERPlus",
    "ImageFolder",
    "SyntheticFaces",
    "balanced_sampler",
    "build_data",
    "build_dataset",
    "class_counts",
    "disk_kind",
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
    """``build_data(DataSpec.of(kind, root, **options), split, image_size, augment)``.

    Args:
        kind: a kind of :data:`DATA_KINDS` with a folder: "rafdb", "ferplus", "affectnet",
            "affectnet7", "affectnet8" (AffectNet with 7 / 8 classes) or "folder".
        root: the dataset's folder (layouts in ``docs/datasets.md``).
        split: "train", "val" or "test" (for "folder": the sub-folder name).
        image_size: side of the square ``image`` tensors.
        augment: apply the training augmentations (``FaceTransform``).
        **options: the dataset class's keyword options, e.g. ``num_classes=7`` or
            ``face="box"`` for AffectNet, ``source="pixels"`` for FERPlus.

    Raises:
        ValueError: unknown kind, option or split, missing files, malformed label files.
    """
    return build_data(DataSpec.of(kind.lower(), root, **options), split, image_size, augment)
