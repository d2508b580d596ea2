"""Facial-expression datasets in their official on-disk layouts.

Every dataset is a ``torch.utils.data.Dataset`` with

- ``labels: list[str]``: class names in class-index order, from the dataset's own
  definition (the exported model card copies them; the service never hard-codes them);
- ``targets: list[int]``: the class index of every sample (-1 when unlabeled), readable
  without decoding any image (for samplers and class statistics);

and items that are dicts: ``image`` ``(3, H, W) float32`` RGB in [0, 1] (not normalised),
``label`` int64 scalar tensor (-1 for unlabeled), ``poker_face`` with ``has_poker_face``
(photographs have no true poker face: the image itself stands in and the flag is False, so
photographs and rendered faces can share a batch) and, for FERPlus, ``soft_label``
``(K,) float32`` vote distribution.

Images are decoded with ``service.vision.imaging.decode_image`` and faces aligned with
``service.vision.align``, the same code the service runs on requests, so training never
sees faces prepared differently from those served.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from service.errors import PFViTError
from service.vision.align import align_face, warp_affine
from service.vision.imaging import decode_image
from training.data.transforms import FaceTransform

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

# Generous: AffectNet originals reach tens of megapixels; the limit only stops a corrupt
# header from allocating gigabytes.
DEFAULT_MAX_PIXELS = 80_000_000

RAFDB_LABELS = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
AFFECTNET_LABELS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
AFFECTNET_COLUMNS = [
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
]

# Split names accepted everywhere, mapped per dataset below. RAF-DB has no validation split
# and AffectNet's test split is not public, so by common practice their test/validation
# sets double as each other.
_RAFDB_SPLITS = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}
_AFFECTNET_SPLITS = {
    "train": "training.csv",
    "training": "training.csv",
    "val": "validation.csv",
    "valid": "validation.csv",
    "validation": "validation.csv",
    "test": "validation.csv",
}


def split_key(split: str, table: dict, dataset: str) -> str:
    key = split.lower()
    if key not in table:
        raise ValueError(f"{dataset} has no split {split!r}; use one of {sorted(table)}")
    return key


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to ``(H, W, 3) uint8`` RGB with the service's decoder.

    Greyscale files (FERPlus) come back as three equal channels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a decodable image (the decoder's reason is chained).
    """
    data = Path(path).read_bytes()
    try:
        return decode_image(data, max_pixels=max_pixels)
    except PFViTError as exc:  # the service's decode errors; name the file they are about
        raise ValueError(f"{path}: {exc.detail}") from exc


class FaceDataset(Dataset):
    """Common base: label bookkeeping and the decode -> face -> transform item pipeline.

    Subclasses set ``labels`` and ``targets`` and implement ``load_face(index)``, which
    returns the face as ``(H, W, 3) uint8`` RGB (aligned or cropped, at any size).
    """

    labels: list[str]
    targets: list[int]

    def __init__(self, transform: FaceTransform) -> None:
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.targets)

    def load_face(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # generator=None: the global torch RNG, which DataLoader seeds differently per worker.
        image = self.transform(self.load_face(index))
        return {
            "image": image,
            "label": torch.tensor(self.targets[index], dtype=torch.int64),
            "poker_face": image,
            "has_poker_face": torch.tensor(False),
        }


# --- RAF-DB ---------------------------------------------------------------------------------


class RAFDB(FaceDataset):
    """RAF-DB *basic* (7 classes), from its official layout.

    ``root`` is the folder holding ``basic/`` (or ``basic/`` itself)::

        basic/EmoLabel/list_patition_label.txt    "train_00001.jpg 5" per line, labels 1..7
        basic/Image/aligned/train_00001_aligned.jpg

    The labels file's 1-based classes become 0-based indices into ``RAFDB_LABELS``. The
    100x100 aligned crops are resized to ``image_size`` by the transform.
    """

    def __init__(self, root: str | Path, split: str, transform: FaceTransform) -> None:
        super().__init__(transform)
        self.labels = list(RAFDB_LABELS)  # a copy: callers may edit theirs
        root = Path(root)
        base = root / "basic" if (root / "basic").is_dir() else root
        list_file = base / "EmoLabel" / "list_patition_label.txt"  # sic: the official name
        image_dir = base / "Image" / "aligned"
        if not list_file.is_file():
            raise ValueError(f"RAF-DB labels not found: expected {list_file}")
        if not image_dir.is_dir():
            raise ValueError(f"RAF-DB aligned images not found: expected the folder {image_dir}")
        prefix = _RAFDB_SPLITS[split_key(split, _RAFDB_SPLITS, "RAF-DB")] + "_"

        self.paths: list[Path] = []
        self.targets = []
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit() or not 1 <= int(fields[1]) <= 7:
                raise ValueError(f"{list_file}:{line_no}: expected 'name.jpg <1..7>', got {line!r}")
            name, label = fields[0], int(fields[1])
            if not name.startswith(prefix):
                continue
            stem = Path(name).stem
            self.paths.append(image_dir / f"{stem}_aligned{Path(name).suffix}")
            self.targets.append(label - 1)
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise ValueError(f"RAF-DB: {len(missing)} listed images are missing, e.g. {missing[0]}")
        if not self.paths:
            raise ValueError(f"RAF-DB: no {prefix[:-1]} images listed in {list_file}")

    def load_face(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])


def require_columns(fieldnames: Sequence[str] | None, required: Sequence[str], path: Path) -> None:
    missing = [c for c in required if c not in (fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(fieldnames or [])}")


# --- AffectNet ------------------------------------------------------------------------------


def five_points_from_68(points: np.ndarray) -> np.ndarray:
    """The 5 alignment points from the 68-point iBUG layout, ``(68, 2) -> (5, 2)``.

    Eye centres are the means of each eye's six contour points (36-41 and 42-47, the
    image-left eye first), the nose tip is point 30, the mouth corners 48 and 54: the same
    order as ``service.vision.align`` (left eye, right eye, nose, left and right mouth).
    """
    p = np.asarray(points, dtype=np.float64).reshape(68, 2)
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Square crop around a face box ``(x, y, width, height)``, resampled to ``size``.

    The square's side is the box's longer side, centred on the box, so the face keeps its
    aspect ratio; parts outside the image are black. Returns ``(size, size, 3) uint8``.
    """
    x, y, w, h = box
    side = max(w, h)
    if side <= 0:
        raise ValueError(f"empty face box {box}")
    s = size / side
    # Pixel centres sit on integers (the align module's convention), so a box whose first
    # pixel is x and which spans w pixels has its centre at x + w/2 - 0.5; it maps to the
    # output's centre, size/2 - 0.5.
    cx, cy = x + w / 2.0 - 0.5, y + h / 2.0 - 0.5
    centre = size / 2.0 - 0.5
    matrix = np.array([[s, 0.0, centre - s * cx], [0.0, s, centre - s * cy]])
    return warp_affine(image, matrix, (size, size))


class AffectNet(FaceDataset):
    """AffectNet, 8 classes or 7 (without contempt), from its CSV files.

    ``root`` holds ``training.csv`` and ``validation.csv`` (columns
    ``AFFECTNET_COLUMNS``) and the images named by ``subDirectory_filePath``, either
    directly under ``root`` or under ``root/Manually_Annotated_Images``.

    Expressions 0..7 index ``AFFECTNET_LABELS``; 8 (none), 9 (uncertain), 10 (no face)
    are dropped, and 7 (contempt) too when ``num_classes == 7``.

    Args:
        num_classes: 8, or 7 to drop contempt.
        face: how the face is taken from the image. "align": the 5 points derived from
            the 68 landmarks, through ``align_face`` (rows without landmarks fall back to
            "box"); "box": a square crop around the face box; "full": the image as it is;
            "auto": "full" when ``precropped`` else "align".
        precropped: the image files are already the face boxes (AffectNet's cropped
            release): the box is not applied again, and landmarks, given in the original
            image, are moved into the crop by the box offset and scale.
        skip_missing: leave out rows whose image file is missing instead of failing when
            the item is loaded.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: FaceTransform,
        num_classes: int = 8,
        face: Literal["auto", "align", "box", "full"] = "auto",
        precropped: bool = False,
        skip_missing: bool = False,
    ) -> None:
        super().__init__(transform)
        if num_classes not in (7, 8):
            raise ValueError(f"AffectNet has 7 or 8 classes, got num_classes={num_classes}")
        if face not in ("auto", "align", "box", "full"):
            raise ValueError(f"face must be 'auto', 'align', 'box' or 'full', got {face!r}")
        self.labels = list(AFFECTNET_LABELS[:num_classes])
        self.face = ("full" if precropped else "align") if face == "auto" else face
        self.precropped = precropped
        root = Path(root)
        csv_path = root / _AFFECTNET_SPLITS[split_key(split, _AFFECTNET_SPLITS, "AffectNet")]
        if not csv_path.is_file():
            raise ValueError(f"AffectNet labels not found: expected {csv_path}")

        rel_paths: list[str] = []
        boxes: list[tuple[float, ...]] = []
        # Only the 5 derived points are kept: 68 points for ~290K rows would be ~300 MB,
        # copied into every loader worker.
        points: list[np.ndarray] = []
        no_points = np.full((5, 2), np.nan)
        self.targets = []
        with csv_path.open(newline="") as f:
            for row in _affectnet_rows(f, csv_path):
                expression = int(float(row["expression"]))
                if not 0 <= expression < num_classes:
                    continue
                rel_paths.append(row["subDirectory_filePath"])
                boxes.append(tuple(float(row[c]) for c in ("face_x", "face_y", "face_width", "face_height")))
                landmarks = _parse_landmarks(row.get("facial_landmarks") or "")
                points.append(no_points if landmarks is None else five_points_from_68(landmarks))
                self.targets.append(expression)
        if not self.targets:
            raise ValueError(f"AffectNet: no rows with expressions 0..{num_classes - 1} in {csv_path}")

        image_dir = _find_image_dir(root, rel_paths)
        self.paths = [image_dir / p for p in rel_paths]
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4) x, y, width, height
        self.points = np.stack(points)  # (N, 5, 2) alignment points, NaN where absent
        if skip_missing:
            keep = [i for i, p in enumerate(self.paths) if p.is_file()]
            self.paths = [self.paths[i] for i in keep]
            self.boxes, self.points = self.boxes[keep], self.points[keep]
            self.targets = [self.targets[i] for i in keep]
            if not self.targets:
                raise ValueError(f"AffectNet: none of the images listed in {csv_path} exists under {image_dir}")

    def load_face(self, index: int) -> np.ndarray:
        image = read_image(self.paths[index])
        box = self.boxes[index]
        size = self.transform.image_size
        if self.face == "full":
            return image
        points = self.points[index]
        if self.face == "align" and np.isfinite(points).all():
            if self.precropped:
                h, w = image.shape[:2]
                points = (points - [box[0], box[1]]) * [w / box[2], h / box[3]]
            return align_face(image, points, size)[0]
        if self.precropped:  # the file is the box already
            return image
        return crop_box(image, box, size)


def _affectnet_rows(f, path: Path):
    """Rows of an AffectNet CSV as dicts, with or without its header line."""
    reader = csv.reader(f)
    first = next(reader, None)
    if first is None:
        return
    if first and first[0].strip() == AFFECTNET_COLUMNS[0]:
        header = [c.strip() for c in first]
        require_columns(header, AFFECTNET_COLUMNS[:7], path)
    else:  # a headerless copy: the official column order
        header = AFFECTNET_COLUMNS
        yield dict(zip(header, first))
    for row in reader:
        if row:
            yield dict(zip(header, row))


def _parse_landmarks(text: str) -> np.ndarray | None:
    """``"x1;y1;x2;y2;..."`` (136 numbers) -> ``(68, 2)``; ``None`` when absent or invalid."""
    parts = [p for p in text.replace(",", ";").split(";") if p.strip()]
    if len(parts) != 136:
        return None
    try:
        pts = np.array([float(p) for p in parts], dtype=np.float64).reshape(68, 2)
    except ValueError:  # a non-numeric entry: treat as no landmarks, the box still works
        return None
    if not np.isfinite(pts).all() or np.ptp(pts[:, 0]) <= 0 or np.ptp(pts[:, 1]) <= 0:
        return None
    return pts


def _find_image_dir(root: Path, rel_paths: Sequence[str]) -> Path:
    candidates = [root, root / "Manually_Annotated_Images", root / "Manually_Annotated" / "Manually_Annotated_Images"]
    # Probe a handful of rows, not one: a single missing file must not hide the folder.
    probe = rel_paths[: min(len(rel_paths), 20)]
    for directory in candidates:
        if any((directory / p).is_file() for p in probe):
            return directory
    raise ValueError(f"AffectNet images not found: none of {[str(c) for c in candidates]} holds e.g. {probe[0]}")


# --- generic folder -------------------------------------------------------------------------


class ImageFolder(FaceDataset):
    """Faces in folders: ``root/<split>/<label>/*.jpg`` and/or ``root/<split>/*.jpg``.

    Images inside a label folder (at any depth) take that label; images directly in the
    split folder are unlabeled (-1, for MAE pre-training). The label order is the lines of
    ``root/labels.txt`` if present, else the sorted label-folder names. Faces are expected
    aligned already (see ``training.data.align_dataset``) and are only resized.
    """

    def __init__(self, root: str | Path, split: str, transform: FaceTransform) -> None:
        super().__init__(transform)
        root = Path(root)
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ValueError(f"no folder {split_dir}; splits present: {present}")
        label_dirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        labels_file = root / "labels.txt"
        if labels_file.is_file():
            self.labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
            unknown = sorted(set(label_dirs) - set(self.labels))
            if unknown:
                raise ValueError(f"{split_dir} has folders {unknown} not listed in {labels_file}")
        else:
            self.labels = label_dirs
        index = {name: i for i, name in enumerate(self.labels)}

        self.paths: list[Path] = []
        self.targets = []
        for path in sorted(split_dir.iterdir()):
            if _is_image(path):
                self.paths.append(path)
                self.targets.append(-1)
        for name in label_dirs:
            for path in sorted((split_dir / name).rglob("*")):
                if _is_image(path):
                    self.paths.append(path)
                    self.targets.append(index[name])
        if not self.paths:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {split_dir}")

    def load_face(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
