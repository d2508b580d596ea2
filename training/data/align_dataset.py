"""Align a folder of raw face photos with the service's own detector and aligner.

Walks ``input_dir`` (sub-folders kept, so ``<label>/`` folders stay labels), decodes every
image with ``service.vision.imaging.decode_image``, detects faces with
``service.vision.mtcnn.MTCNN`` and aligns one face per image with
``service.vision.align.align_face``: exactly the steps a served request goes through, so a
model trained on the output sees faces prepared as in production. Writes PNG crops to
``output_dir`` mirroring the input tree, and lists every image without a usable face in a
CSV report (``path,reason,detail``).

Usage::

    python -m training.data.align_dataset raw/ aligned/ --size 224
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from service.errors import PFViTError
from service.vision.align import align_face
from service.vision.imaging import decode_image, encode_png
from training.data.datasets import IMAGE_SUFFIXES

# The shipped detector, wherever the command is run from.
DEFAULT_MTCNN_DIR = Path(__file__).resolve().parents[2] / "models" / "mtcnn"

if TYPE_CHECKING:  # imported lazily at run time: only main() needs ONNX Runtime
    from service.vision.mtcnn import FaceDetection

REPORT_COLUMNS = ("path", "reason", "detail")


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
        p: p.with_name(p.name + ".png") if stems[p.with_suffix("")] > 1 else p.with_suffix(".png")
        for p in relative
    }


def choose_face(detections: Sequence[FaceDetection], keep: str) -> FaceDetection | None:
    """The face to keep: the largest box ("largest") or the highest score ("confident").

    Dataset photos show one subject, usually the biggest face; background faces are smaller
    even when the detector is as sure of them.
    """
    if not detections:
        return None
    if keep == "confident":
        return max(detections, key=lambda d: d.score)

    def area(d: FaceDetection) -> float:
        x1, y1, x2, y2 = d.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    return max(detections, key=lambda d: (area(d), d.score))


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
    add("output_dir", type=Path, help="folder for the aligned PNG crops")
    add("--size", type=int, default=224, help="side of the aligned square crop, pixels (default 224)")
    add("--models", type=Path, default=DEFAULT_MTCNN_DIR, help="MTCNN model folder (default: the repository's models/mtcnn)")
    add(
        "--keep",
        choices=("largest", "confident"),
        default="largest",
        help="which face to keep when several are found (default largest)",
    )
    add("--min-face-size", type=int, default=20, help="smallest face side searched for, pixels (default 20)")
    add("--threshold", type=float, default=None, help="O-Net score threshold (default: the detector's)")
    add("--max-pixels", type=int, default=40_000_000, help="skip images with more pixels (default 40M)")
    add("--report", type=Path, default=None, help="CSV of skipped images (default OUTPUT_DIR/no_face.csv)")
    add("--overwrite", action="store_true", help="redo images whose output already exists")
    add("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    return parser


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
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        # Otherwise a rerun would treat the previous run's crops as new raw photos.
        parser.error("the output folder must not lie inside the input folder")

    # Lazy: ONNX Runtime and the detector are needed only here, not to import this module.
    from service.vision.mtcnn import MTCNN

    detector = MTCNN.from_dir(args.models, intra_op_threads=args.threads, min_face_size=args.min_face_size)
    relative = find_images(input_dir)
    outputs = output_paths(relative)
    report_path: Path = args.report or output_dir / "no_face.csv"
    output_dir.mkdir(parents=True, exist_ok=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)

    written = skipped = 0
    failures: list[tuple[str, str, str]] = []
    for rel in tqdm(relative, desc="aligning", unit="img"):
        target = output_dir / outputs[rel]
        if target.exists() and not args.overwrite:
            skipped += 1  # resumable: a rerun only does what is left
            continue
        try:
            image = decode_image((input_dir / rel).read_bytes(), max_pixels=args.max_pixels)
        except PFViTError as exc:  # invalid, unsupported or too large: the decoder's own errors
            failures.append((rel.as_posix(), exc.slug, exc.detail))
            continue
        except OSError as exc:  # unreadable file (permissions, vanished)
            failures.append((rel.as_posix(), "unreadable", str(exc)))
            continue
        face = choose_face(detector.detect(image, threshold=args.threshold), args.keep)
        if face is None:
            failures.append((rel.as_posix(), "no-face", ""))
            continue
        try:
            aligned, _ = align_face(image, face.landmarks, args.size)
        except ValueError as exc:  # degenerate landmarks
            failures.append((rel.as_posix(), "align-failed", str(exc)))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_png(aligned))
        written += 1

    with report_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REPORT_COLUMNS)
        writer.writerows(failures)
    print(
        f"{written} aligned, {skipped} already done, {len(failures)} without a usable face "
        f"(listed in {report_path}), of {len(relative)} images",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
