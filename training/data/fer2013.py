"""FER2013: the ICML 2013 representation-learning challenge faces (Kaggle).

35,887 grey 48x48 faces in 7 classes. Two on-disk forms are read:

- Kaggle's ``fer2013.csv`` (columns ``emotion,pixels,Usage``; ``Usage`` is ``Training``,
  ``PublicTest`` or ``PrivateTest``), in the dataset folder;
- Kaggle's image-folder form, ``<any folder>/<class>/<Usage>_<n>.jpg`` (``angry``, ``disgust``,
  ``fear``, ``happy``, ``sad``, ``surprise``, ``neutral``), or the same tree after
  ``pfvit-align-dataset`` (``.png``). The split is read from the file-name prefix, never from the
  folder name, and only names of exactly that form count: copies such as ``Training_1.jpg3.jpg``
  (augmented duplicates some redistributions add) are left out.

Splits: ``train`` = Training (28,709), ``val`` = PublicTest (3,589), ``test`` = PrivateTest
(3,589). ``export_csv`` writes the CSV's faces as the image-folder form, so both forms go
through the same alignment command. FER2013 was released for research; users check its terms
before any other use.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from service.vision.imaging import encode_png
from training.data.datasets import FaceDataset, read_image
from training.data.transforms import FaceTransform

# Class index -> name in FER2013's own order (its ``emotion`` column), in the project's words.
FER2013_LABELS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
# The image-folder form's class folders, in the same order.
FER2013_FOLDERS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
FER2013_USAGE = {
    "train": "Training",
    "val": "PublicTest",
    "valid": "PublicTest",
    "validation": "PublicTest",
    "test": "PrivateTest",
}
FER2013_SIDE_PX = 48
_FILE_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def usage_of(split: str) -> str:
    key = split.lower()
    if key not in FER2013_USAGE:
        raise ValueError(f"FER2013 has no split {split!r}; use one of {sorted(FER2013_USAGE)}")
    return FER2013_USAGE[key]


def scan_folder(root: Path, usage: str) -> list[tuple[Path, int]]:
    """``(path, class index)`` of every original image of one usage below ``root``, sorted."""
    numbered: list[tuple[int, str, Path, int]] = []
    for path in root.rglob("*"):
        match = _FILE_NAME.match(path.name)
        if not match or match.group(1) != usage or not path.is_file():
            continue
        folder = path.parent.name.lower()
        if folder not in FER2013_FOLDERS:
            raise ValueError(f"{path}: class folder {path.parent.name!r} is not one of {FER2013_FOLDERS}")
        numbered.append((int(match.group(2)), path.as_posix(), path, FER2013_FOLDERS.index(folder)))
    # Numeric order of <n>, so the order (and a seeded shuffle of it) is the same on any file system.
    numbered.sort(key=lambda item: item[:2])
    return [(path, label) for _, _, path, label in numbered]


def read_csv(csv_path: Path, usage: str) -> tuple[np.ndarray, list[int]]:
    """``((N, 48, 48) uint8 faces, class indices)`` of one usage from Kaggle's ``fer2013.csv``."""
    faces, targets = [], []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            if row["Usage"] != usage:
                continue
            pixels = np.array(row["pixels"].split(), dtype=np.uint8)
            if pixels.size != FER2013_SIDE_PX * FER2013_SIDE_PX:
                raise ValueError(f"{csv_path}:{line}: {pixels.size} pixels, expected {FER2013_SIDE_PX**2}")
            label = int(row["emotion"])
            if not 0 <= label < len(FER2013_LABELS):
                raise ValueError(f"{csv_path}:{line}: emotion {label} out of range")
            faces.append(pixels.reshape(FER2013_SIDE_PX, FER2013_SIDE_PX))
            targets.append(label)
    return np.stack(faces) if faces else np.zeros((0, FER2013_SIDE_PX, FER2013_SIDE_PX), np.uint8), targets


def export_csv(csv_path: str | Path, out_dir: str | Path) -> int:
    """Write ``fer2013.csv``'s faces as ``out_dir/<Usage>/<class>/<Usage>_<row>.png``; returns the count.

    The row number is the face's 0-based position in the CSV, so FERPlus labels (matched by row
    order) can be joined later.
    """
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    count = 0
    with csv_path.open(newline="") as f:
        for row_index, row in enumerate(csv.DictReader(f)):
            grey = np.array(row["pixels"].split(), dtype=np.uint8).reshape(FER2013_SIDE_PX, FER2013_SIDE_PX)
            target = out_dir / row["Usage"] / FER2013_FOLDERS[int(row["emotion"])] / f"{row['Usage']}_{row_index}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_png(np.repeat(grey[:, :, None], 3, axis=2)))
            count += 1
    return count


class FER2013(FaceDataset):
    """One split of FER2013 from ``root`` (``fer2013.csv`` inside it, or the image-folder form).

    Args:
        root: the dataset folder.
        split: "train", "val" (PublicTest) or "test" (PrivateTest).
        transform: decoding-independent face transform (resize, augmentation).
        cache: decode every face once into memory (36k small faces: ~0.4 GB at 64 px RGB).
    """

    labels = FER2013_LABELS

    def __init__(self, root: str | Path, split: str, transform: FaceTransform, cache: bool = True) -> None:
        super().__init__(transform)
        root = Path(root)
        usage = usage_of(split)
        self.paths: list[Path] = []
        self._faces: list[np.ndarray] | None = None
        csv_path = root / "fer2013.csv"
        if csv_path.is_file():
            grey, self.targets = read_csv(csv_path, usage)
            self._faces = [np.repeat(g[:, :, None], 3, axis=2) for g in grey]
        else:
            items = scan_folder(root, usage)
            self.paths = [p for p, _ in items]
            self.targets = [t for _, t in items]
            if cache:
                self._faces = [read_image(p) for p in self.paths]
        if not self.targets:
            raise ValueError(
                f"no FER2013 {usage} faces under {root} (expected fer2013.csv or <class>/{usage}_<n>.jpg|png)"
            )

    def load_face(self, index: int) -> np.ndarray:
        if self._faces is not None:
            return self._faces[index]
        return read_image(self.paths[index])
