"""Align a folder of raw face photos with the service's own detector and aligner.

Walks ``input_dir`` (sub-folders kept, so ``<label>/`` folders stay labels), decodes every
image with ``service.vision.imaging.decode_image`` and runs ``service.vision.faces.find_faces``
(MTCNN, the minimum-face-size floor, 5-point alignment) on it: exactly the steps a served
request goes through, so a model trained on the output sees faces prepared as in production.
Writes PNG crops to ``output_dir`` mirroring the input tree.

Small, loosely centred crops (FER2013's 48 px faces) give the detector too little context:
``--pad`` edge-pads each photo and ``--upscale`` enlarges it before detection, the way such a
face is sent to the service inside a larger picture. Where no face is found, ``--fallback
mean`` aligns the photo with one fixed transform: the mean landmark positions of every face
that *was* detected (relative to the photo's size), so an undetected face is never cropped in
some other, silent way. Every image gets a row in ``OUTPUT_DIR/landmarks.csv``
(``path,method,width,height,x1,y1,...,x5,y5``; method ``detected``, ``fallback`` or a failure
reason), and ``OUTPUT_DIR/summary.json`` counts the methods per top-level folder.

Usage::

    python -m training.data.align_dataset raw/ aligned/ --size 224
    python -m training.data.align_dataset fer2013/ fer2013-aligned/ --size 64 --pad 24 --upscale 3 --fallback mean
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from service.errors import PFViTError
from service.vision.align import align_face
from service.vision.faces import AlignedFace, find_faces
from service.vision.imaging import decode_image, encode_png, resize_rgb
from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, MIN_FACE_SIZE_FLOOR
from training.data.datasets import IMAGE_SUFFIXES

# The shipped detector, wherever the command is run from.
DEFAULT_MTCNN_DIR = Path(__file__).resolve().parents[2] / "models" / "mtcnn"

if TYPE_CHECKING:  # imported lazily at run time: only main() needs ONNX Runtime
    from service.vision.mtcnn import MTCNN

LANDMARK_COLUMNS = ("path", "method", "width", "height", *(f"{axis}{i}" for i in range(1, 6) for axis in "xy"))
DETECTED, FALLBACK = "detected", "fallback"
# Every face of a photo is detected and aligned; choose_face then keeps one.
_ALL_FACES = 1_000


def find_images(input_dir: Path) -> list[Path]:
    """Every image below ``input_dir``, as sorted paths relative to it (hidden files skipped)."""
    return sorted(
        p.relative_to(input_dir)
        for p in input_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def output_paths(relative: Sequence[Path]) -> dict[Path, Path]:
    """Map each input path to its ``.png`` output path, both relative.

    ``a.jpg`` becomes ``a.png``; when two inputs would collide (``a.jpg`` and ``a.png`` in
    one folder), both keep their suffix in the name (``a.jpg.png``) so neither overwrites
    the other.
    """
    stems = Counter(p.with_suffix("") for p in relative)
    return {
        p: p.with_name(p.name + ".png") if stems[p.with_suffix("")] > 1 else p.with_suffix(".png") for p in relative
    }


def choose_face(detections: Sequence[AlignedFace], keep: str) -> AlignedFace | None:
    """The face to keep: the largest box ("largest") or the highest score ("confident").

    Dataset photos show one subject, usually the biggest face; background faces are smaller
    even when the detector is as sure of them.
    """
    if not detections:
        return None
    if keep == "confident":
        return max(detections, key=lambda d: d.score or 0.0)
    return max(detections, key=lambda d: (d.area, d.score))


def prepare(image: np.ndarray, pad_px: int, upscale: float) -> np.ndarray:
    """Edge-pad ``pad_px`` on every side, then resize by ``upscale`` (bilinear, the service's
    resize): a small face crop becomes a picture with the face inside it."""
    if pad_px:
        image = np.pad(image, ((pad_px, pad_px), (pad_px, pad_px), (0, 0)), mode="edge")
    if upscale != 1.0:
        h, w = image.shape[:2]
        image = resize_rgb(image, (round(w * upscale), round(h * upscale)))
    return image


def mean_relative_landmarks(rows: Sequence[dict[str, str]]) -> np.ndarray | None:
    """``(5, 2)`` mean landmark positions of the detected faces, as fractions of the prepared
    photo's width and height; None when no face was detected at all."""
    points = [
        np.array([[float(r[f"x{i}"]) / float(r["width"]), float(r[f"y{i}"]) / float(r["height"])] for i in range(1, 6)])
        for r in rows
        if r["method"] == DETECTED
    ]
    return np.mean(points, axis=0) if points else None


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an earlier run's ``landmarks.csv`` by path (empty when there is none)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def landmark_row(rel: str, method: str, image: np.ndarray | None, landmarks: np.ndarray | None) -> dict[str, str]:
    row = {"path": rel, "method": method, "width": "", "height": "", **{c: "" for c in LANDMARK_COLUMNS[4:]}}
    if image is not None:
        row["height"], row["width"] = str(image.shape[0]), str(image.shape[1])
    if landmarks is not None:
        for i, (x, y) in enumerate(np.asarray(landmarks).reshape(5, 2), start=1):
            row[f"x{i}"], row[f"y{i}"] = f"{x:.3f}", f"{y:.3f}"
    return row


def summarise(rows: Sequence[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Counts of each method per top-level folder, and over all (``"*"``)."""
    out: dict[str, Counter] = {"*": Counter()}
    for row in rows:
        top = row["path"].split("/", 1)[0] if "/" in row["path"] else "."
        out.setdefault(top, Counter())[row["method"]] += 1
        out["*"][row["method"]] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfvit-align-dataset",
        description=(
            "Detect and align one face per photo with the service's MTCNN and 5-point "
            "alignment; write PNG crops mirroring the input folders."
        ),
    )
    add = parser.add_argument
    add("input_dir", type=Path, help="folder of raw photos (sub-folders, e.g. labels, are kept)")
    add("output_dir", type=Path, help="folder for the aligned PNG crops, landmarks.csv and summary.json")
    add("--size", type=int, default=224, help="side of the aligned square crop, pixels (default 224)")
    add(
        "--models",
        type=Path,
        default=DEFAULT_MTCNN_DIR,
        help="MTCNN model folder (default: the repository's models/mtcnn)",
    )
    add(
        "--keep",
        choices=("largest", "confident"),
        default="largest",
        help="which face to keep when several are found (default largest)",
    )
    add(
        "--min-face-size",
        type=int,
        default=DEFAULT_MIN_FACE_SIZE,
        help=f"smallest face side searched for and kept, pixels (default {DEFAULT_MIN_FACE_SIZE})",
    )
    add("--threshold", type=float, default=None, help="O-Net score threshold (default: the detector's)")
    add("--pad", type=int, default=0, help="edge-pad every photo by this many pixels before detection (default 0)")
    add(
        "--upscale",
        type=float,
        default=1.0,
        help="resize every (padded) photo by this factor before detection (default 1)",
    )
    add(
        "--fallback",
        choices=("none", "mean"),
        default="none",
        help=(
            "photos without a detected face: skip them (none) or align them with the mean landmarks of the "
            "detected faces (mean)"
        ),
    )
    add("--max-pixels", type=int, default=40_000_000, help="skip images with more pixels (default 40M)")
    add("--overwrite", action="store_true", help="redo images already listed in OUTPUT_DIR/landmarks.csv")
    add("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    return parser


def _align_one(
    detector: MTCNN, path: Path, rel: str, args: argparse.Namespace
) -> tuple[dict[str, str], np.ndarray | None]:
    """``(landmarks.csv row, aligned crop or None)`` for one photo."""
    try:
        image = prepare(decode_image(path.read_bytes(), max_pixels=args.max_pixels), args.pad, args.upscale)
    except PFViTError as exc:  # invalid, unsupported or too large: the decoder's own errors
        return landmark_row(rel, exc.slug, None, None), None
    except OSError:  # unreadable file (permissions, vanished)
        return landmark_row(rel, "unreadable", None, None), None
    faces = find_faces(
        detector,
        image,
        size=args.size,
        min_face_size=args.min_face_size,
        threshold=args.threshold,
        max_faces=_ALL_FACES,
    )
    face = choose_face(faces, args.keep)
    if face is None:
        return landmark_row(rel, "no-face", image, None), None
    return landmark_row(rel, DETECTED, image, face.landmarks), face.aligned


def _apply_fallback(
    rows: dict[str, dict[str, str]],
    input_dir: Path,
    output_dir: Path,
    outputs: dict[Path, Path],
    args: argparse.Namespace,
) -> np.ndarray | None:
    """Align every "no-face" photo with the detected faces' mean landmarks; returns them."""
    mean = mean_relative_landmarks(list(rows.values()))
    if mean is None:
        return None
    for rel, row in rows.items():
        if row["method"] != "no-face":
            continue
        image = prepare(
            decode_image((input_dir / rel).read_bytes(), max_pixels=args.max_pixels), args.pad, args.upscale
        )
        landmarks = mean * np.array([image.shape[1], image.shape[0]], dtype=np.float64)
        aligned, _ = align_face(image, landmarks, args.size)
        target = output_dir / outputs[Path(rel)]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_png(aligned))
        rows[rel] = landmark_row(rel, FALLBACK, image, landmarks)
    return mean


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 also when some images had no face)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    input_dir: Path = args.input_dir
    output_dir: Path = args.output_dir
    if not input_dir.is_dir():
        parser.error(f"input folder {input_dir} does not exist")
    if args.size <= 0:
        parser.error("--size must be positive")
    if args.min_face_size < MIN_FACE_SIZE_FLOOR:
        parser.error(f"--min-face-size must be at least {MIN_FACE_SIZE_FLOOR}")
    if args.pad < 0 or args.upscale <= 0:
        parser.error("--pad must be >= 0 and --upscale > 0")
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        # Otherwise a rerun would treat the previous run's crops as new raw photos.
        parser.error("the output folder must not lie inside the input folder")

    # Lazy: ONNX Runtime and the detector are needed only here, not to import this module.
    from service.vision.mtcnn import MTCNN

    detector = MTCNN.from_dir(args.models, intra_op_threads=args.threads, min_face_size=args.min_face_size)
    relative = find_images(input_dir)
    outputs = output_paths(relative)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = output_dir / "landmarks.csv"
    # Resumable: a rerun only does the photos the table does not list yet.
    done = {} if args.overwrite else read_rows(table)
    rows: dict[str, dict[str, str]] = {}
    for rel in tqdm(relative, desc="aligning", unit="img"):
        key = rel.as_posix()
        if key in done:
            # A fallback row is a photo the detector missed: not searched again, but aligned
            # anew below with this run's mean landmarks.
            rows[key] = {**done[key], "method": "no-face"} if done[key]["method"] == FALLBACK else done[key]
            continue
        row, aligned = _align_one(detector, input_dir / rel, key, args)
        if aligned is not None:
            target = output_dir / outputs[rel]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_png(aligned))
        rows[key] = row
    mean = _apply_fallback(rows, input_dir, output_dir, outputs, args) if args.fallback == "mean" else None

    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LANDMARK_COLUMNS)
        writer.writeheader()
        writer.writerows(rows.values())
    summary = {
        "size": args.size,
        "pad_px": args.pad,
        "upscale": args.upscale,
        "min_face_size": args.min_face_size,
        "fallback": args.fallback,
        "fallback_landmarks_relative": None if mean is None else mean.round(5).tolist(),
        "counts": summarise(list(rows.values())),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    counts = summary["counts"]["*"]
    print(
        f"{counts.get(DETECTED, 0)} detected, {counts.get(FALLBACK, 0)} aligned with the fixed fallback, "
        f"{sum(v for k, v in counts.items() if k not in (DETECTED, FALLBACK))} without a usable face, of "
        f"{len(relative)} images "
        f"(per image: {table}; counts: {output_dir / 'summary.json'})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
