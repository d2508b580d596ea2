"""FERPlus: FER2013's 48 px faces with the votes of ten annotators per face (Microsoft's
``label.csv`` per split folder, or ``fer2013new.csv``), in the dataset contract of
:mod:`training.data.datasets`; the majority and vote-distribution rules of Microsoft's code."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from training.data.datasets import FaceDataset, read_image, require_columns, split_key
from training.data.transforms import FaceTransform

FERPLUS_LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_VOTE_COLUMNS = [*FERPLUS_LABELS, "unknown", "NF"]
_FERPLUS_SPLITS = {
    "train": ("Training", "FER2013Train"),
    "val": ("PublicTest", "FER2013Valid"),
    "valid": ("PublicTest", "FER2013Valid"),
    "validation": ("PublicTest", "FER2013Valid"),
    "test": ("PrivateTest", "FER2013Test"),
}


def ferplus_majority(votes: Sequence[float]) -> int | None:
    """The FERPlus majority-vote class of one row, or ``None`` when the row is dropped.

    ``votes`` are the 10 counts in ``FERPLUS_VOTE_COLUMNS`` order (8 emotions, unknown, NF).
    As the reference code (microsoft/FERPlus, ``_process_data`` in mode "majority") does:
    a single vote is an outlier and is removed; the top class must then hold *more than
    half* of the remaining votes, so a tie never qualifies; a row whose majority is unknown
    or not-a-face is dropped.
    """
    v = _remove_single_votes(votes)
    total = v.sum()
    if total <= 0:
        return None
    top = int(np.argmax(v))
    if v[top] <= 0.5 * total or top >= len(FERPLUS_LABELS):
        return None
    return top


def ferplus_soft_target(votes: Sequence[float]) -> np.ndarray:
    """The probability target: the 8 emotion votes, outliers removed, summing to 1.

    ``(8,) float32``. Unknown and NF votes are left out (they are no class of the model).
    Falls back to the raw emotion votes if removing single votes leaves nothing, and to a
    uniform vector if there are no emotion votes at all.
    """
    k = len(FERPLUS_LABELS)
    emotions = _remove_single_votes(votes)[:k]
    if emotions.sum() <= 0:
        emotions = np.asarray(votes, dtype=np.float64)[:k]
    if emotions.sum() <= 0:
        return np.full(k, 1.0 / k, dtype=np.float32)
    return (emotions / emotions.sum()).astype(np.float32)


def _remove_single_votes(votes: Sequence[float]) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float64).copy()
    if v.shape != (len(FERPLUS_VOTE_COLUMNS),):
        raise ValueError(f"expected {len(FERPLUS_VOTE_COLUMNS)} vote counts, got {v.shape}")
    v[v <= 1.0] = 0.0  # the reference code's outlier rule: one annotator alone is noise
    return v


class FERPlus(FaceDataset):
    """FERPlus (8 classes, 48x48 greyscale faces shown as 3 equal RGB channels).

    ``root`` is the folder holding ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/``,
    or a folder with them in ``data/`` (the layout of microsoft/FERPlus, where the labels
    live, and of the PNG copies that its ``generate_training_data.py`` writes). Valid is
    FER2013's PublicTest, Test its PrivateTest.

    Two label files exist, and they disagree on about 1,600 rows:

    - ``votes="label"``: each split folder's ``label.csv`` (no header; image name, face box,
      then the 10 vote columns of ``FERPLUS_VOTE_COLUMNS``). Microsoft's training code reads
      these, and test figures in the literature (3,137 majority test faces) come from them.
    - ``votes="new"``: ``fer2013new.csv`` (header ``Usage,Image name,<10 vote columns>``, one
      row per ``fer2013.csv`` row in order), in ``root`` or beside ``data/``.

    Image names are not row numbers: every row names its own image. Rows without an image
    name, and rows dropped by ``ferplus_majority``, are left out. Items carry ``label``
    (majority class) and ``soft_label`` (``ferplus_soft_target``).

    Args:
        votes: "label" (the split folders' ``label.csv``) or "new" (``fer2013new.csv``).
        images: a folder with the same split folders holding other copies of the images
            (the aligned faces a recipe writes); empty: the images beside the labels.
        source: "files", "pixels" (Kaggle's ``fer2013.csv`` in ``root``, rows found through
            ``fer2013new.csv``), or "auto" (files when the split's image folder exists).
        cache: decode every face once and keep it (36k faces at 48 px: about 250 MB).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: FaceTransform,
        votes: Literal["label", "new"] = "label",
        images: str = "",
        source: Literal["auto", "files", "pixels"] = "auto",
        cache: bool = True,
    ) -> None:
        super().__init__(transform)
        self.labels = list(FERPLUS_LABELS)
        root = Path(root)
        base = (
            root / "data"
            if (root / "data" / "FER2013Train").is_dir() or (root / "data" / "FER2013Test").is_dir()
            else root
        )
        usage, folder = _FERPLUS_SPLITS[split_key(split, _FERPLUS_SPLITS, "FERPlus")]
        if votes not in ("label", "new"):
            raise ValueError(f"votes must be 'label' or 'new', got {votes!r}")
        if source not in ("auto", "files", "pixels"):
            raise ValueError(f"source must be 'auto', 'files' or 'pixels', got {source!r}")
        image_dir = (Path(images) if images else base) / folder
        new_csv = next(
            (d / "fer2013new.csv" for d in (root, base, base.parent) if (d / "fer2013new.csv").is_file()), None
        )
        if source == "auto":
            source = "files" if image_dir.is_dir() else "pixels"

        names: list[str] = []
        soft: list[np.ndarray] = []
        self.targets = []
        for name, vote_row in _ferplus_vote_rows(
            base / folder / "label.csv" if votes == "label" else new_csv, usage, votes
        ):
            label = ferplus_majority(vote_row)
            if label is None:
                continue
            names.append(name)
            self.targets.append(label)
            soft.append(ferplus_soft_target(vote_row))
        if not self.targets:
            raise ValueError(f"FERPlus: no usable {usage} rows ({votes} votes) under {root}")
        self.soft_labels = torch.from_numpy(np.stack(soft))  # (N, 8) float32
        self.paths: list[Path] = [image_dir / name for name in names]

        self._faces: list[np.ndarray] | None = None
        if source == "pixels":
            old_csv = root / "fer2013.csv"
            if not old_csv.is_file() or new_csv is None:
                raise ValueError(
                    f"FERPlus images not found: neither the folder {image_dir} "
                    f"nor fer2013.csv with fer2013new.csv in {root}"
                )
            row_of = {name: i for i, name in _ferplus_rows_by_name(new_csv)}
            missing = [n for n in names if n not in row_of]
            if missing:
                raise ValueError(f"FERPlus: {len(missing)} images are not named in {new_csv}, e.g. {missing[0]}")
            grey = _read_fer2013_pixels(old_csv, [row_of[n] for n in names], usage)
            self._faces = [np.repeat(g[..., None], 3, axis=2) for g in grey]
        else:
            if not image_dir.is_dir():
                raise ValueError(f"FERPlus images not found: expected the folder {image_dir}")
            missing_files = [p for p in self.paths if not p.is_file()]
            if missing_files:
                raise ValueError(f"FERPlus: {len(missing_files)} images are missing, e.g. {missing_files[0]}")
            if cache:
                self._faces = [read_image(p) for p in self.paths]

    def load_face(self, index: int) -> np.ndarray:
        if self._faces is not None:
            return self._faces[index]
        return read_image(self.paths[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        item["soft_label"] = self.soft_labels[index]
        return item


def _ferplus_vote_rows(path: Path | None, usage: str, votes: str) -> list[tuple[str, list[float]]]:
    """``(image name, 10 votes)`` of every named row of one split from either label file."""
    if path is None or not path.is_file():
        wanted = "label.csv in the split folder" if votes == "label" else "fer2013new.csv"
        raise ValueError(f"FERPlus labels not found: expected {wanted} ({path})")
    rows: list[tuple[str, list[float]]] = []
    with path.open(newline="") as f:
        if votes == "label":
            for line_no, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if len(row) != 2 + len(FERPLUS_VOTE_COLUMNS):
                    raise ValueError(
                        f"{path}:{line_no}: expected name, box and {len(FERPLUS_VOTE_COLUMNS)} votes, "
                        f"got {len(row)} columns"
                    )
                if row[0].strip():
                    rows.append((row[0].strip(), [float(v) for v in row[2:]]))
        else:
            reader = csv.DictReader(f)
            require_columns(reader.fieldnames, ["Usage", "Image name", *FERPLUS_VOTE_COLUMNS], path)
            for row in reader:
                name = (row["Image name"] or "").strip()
                if row["Usage"] == usage and name:
                    rows.append((name, [float(row[c]) for c in FERPLUS_VOTE_COLUMNS]))
    return rows


def _ferplus_rows_by_name(path: Path) -> list[tuple[int, str]]:
    """``(row index, image name)`` of every named row of ``fer2013new.csv``."""
    with path.open(newline="") as f:
        return [
            (i, (row["Image name"] or "").strip())
            for i, row in enumerate(csv.DictReader(f))
            if (row["Image name"] or "").strip()
        ]


def _read_fer2013_pixels(path: Path, rows: list[int], usage: str) -> np.ndarray:
    """The 48x48 greyscale faces of the given ``fer2013.csv`` rows, ``(N, 48, 48) uint8``."""
    wanted = {r: i for i, r in enumerate(rows)}
    out = np.zeros((len(rows), 48, 48), dtype=np.uint8)
    found = 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        require_columns(reader.fieldnames, ["emotion", "pixels", "Usage"], path)
        for row_index, row in enumerate(reader):
            i = wanted.get(row_index)
            if i is None:
                continue
            # Both CSVs list the same images in the same order; a differing Usage means
            # the files do not belong together.
            if row["Usage"] != usage:
                raise ValueError(f"{path}: row {row_index} is {row['Usage']}, fer2013new.csv says {usage}")
            pixels = np.array(row["pixels"].split(), dtype=np.uint8)
            if pixels.size != 48 * 48:
                raise ValueError(f"{path}: row {row_index} has {pixels.size} pixels, expected 2304")
            out[i] = pixels.reshape(48, 48)
            found += 1
    if found != len(rows):
        raise ValueError(f"{path} has fewer rows than fer2013new.csv ({found} of {len(rows)} matched)")
    return out
