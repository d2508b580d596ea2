"""fp16 against fp32 over a whole data set: argmax agreement, logit differences, poker-face PSNR.

The exporter checks an fp16 export on its sample batch (8 faces); the bar for an fp16 model is
argmax agreement of at least 99.5 % with its fp32 twin on a test split, measured here:

    # an fp16 export (pfvit-export --fp16) against the fp32 export of the same checkpoint
    python -m tools.fp16_parity out/my-model-fp32 --fp16 out/my-model-fp16 --data fer2013:/data/fer2013 --split test
    # an fp32 model folder converted here, into a temporary folder (what docs/benchmarks.md reports)
    python -m tools.fp16_parity models/pfvit-micro-fer2013 --data rendered:n=512,size=48 --split test
    # a folder of aligned face crops (any image files; resized to the model's input)
    python -m tools.fp16_parity models/pfvit-micro-fer2013 --faces crops/

``fer2013:/data/fer2013`` with ``--split test`` is FER2013's PrivateTest. ``--data`` needs the
training extra (torch); ``--faces`` needs only ONNX Runtime, Pillow and onnx. Prints one JSON
object; exits 1 when the agreement is under 99.5 %, the logits differ by more than the stated
tolerance or the poker faces fall under the PSNR floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.card import load_card
from training.fp16 import (
    FP16_ARGMAX_AGREEMENT,
    FP16_LOGIT_MAX_ABS,
    FP16_POKER_PSNR_DB,
    GraphPair,
    compare_graphs,
    convert_to_fp16,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _normaliser(model_dir: Path):
    card = load_card(model_dir)
    assert card.input is not None
    mean = np.asarray(card.input.mean, np.float32)[:, None, None]
    std = np.asarray(card.input.std, np.float32)[:, None, None]
    bgr = card.input.colour_order == "BGR"
    size = tuple(card.input.size)

    def normalise(images01: np.ndarray) -> np.ndarray:  # (N, 3, H, W) RGB in [0, 1] -> model input
        x = images01[:, ::-1] if bgr else images01
        return ((x - mean) / std).astype(np.float32)

    return normalise, size


def _folder_batches(folder: Path, size: tuple[int, int], batch: int, limit: int) -> Iterator[np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        files = files[:limit]
    if not files:
        raise SystemExit(f"fp16_parity: no image files under {folder}")
    for start in range(0, len(files), batch):
        crops = [
            np.asarray(Image.open(p).convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))
            for p in files[start : start + batch]
        ]
        yield np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def _dataset_batches(spec: str, split: str, size: tuple[int, int], batch: int, limit: int) -> Iterator[np.ndarray]:
    import torch

    from training.data import build_data

    dataset = build_data(spec, split, size[0], augment=False)
    n = min(len(dataset), limit) if limit else len(dataset)
    for start in range(0, n, batch):
        yield torch.stack([dataset[i]["image"] for i in range(start, min(n, start + batch))]).numpy()


def measure(
    fp32_dir: Path, fp16_dir: Path, batches01: Iterator[np.ndarray], providers: list[str], threads: int = 0
) -> dict[str, Any]:
    normalise, _ = _normaliser(fp32_dir)
    pair = GraphPair(fp32_dir, fp16_dir, providers=providers, threads=threads)
    report: dict[str, Any] = compare_graphs(pair, (normalise(b) for b in batches01))
    report["provider"] = providers[0]
    report["bars"] = {
        "argmax_agreement_min": FP16_ARGMAX_AGREEMENT,
        "logits_max_abs_diff_max": FP16_LOGIT_MAX_ABS,
        "poker_face_psnr_db_min": FP16_POKER_PSNR_DB,
    }
    report["passed"] = bool(
        report["argmax_agreement"] >= FP16_ARGMAX_AGREEMENT
        and report["logits_max_abs_diff"] <= FP16_LOGIT_MAX_ABS
        and report.get("poker_face_psnr_db", np.inf) >= FP16_POKER_PSNR_DB
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="fp32 model folder (card.json + recognition.onnx [+ poker_face.onnx])")
    ap.add_argument(
        "--fp16", type=Path, help="its fp16 export; without it the fp32 graphs are converted into a temporary folder"
    )
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="data spec (training.data), e.g. fer2013:/data/fer2013")
    source.add_argument("--faces", type=Path, help="folder of aligned face crops")
    ap.add_argument("--split", default="test", help="split of --data (default test: FER2013's PrivateTest)")
    ap.add_argument("--limit", type=int, default=0, help="faces at most (0: all)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    _, size = _normaliser(args.model)
    batches = (
        _dataset_batches(args.data, args.split, size, args.batch, args.limit)
        if args.data
        else _folder_batches(args.faces, size, args.batch, args.limit)
    )
    with tempfile.TemporaryDirectory(prefix="pfvit-fp16-") as tmp:
        fp16_dir = args.fp16
        if fp16_dir is None:
            fp16_dir = Path(tmp)
            for name in ("recognition", "poker_face"):
                if (args.model / f"{name}.onnx").is_file():
                    convert_to_fp16(args.model / f"{name}.onnx", fp16_dir / f"{name}.onnx")
        report = measure(args.model, fp16_dir, batches, providers, threads=args.threads)
    report["model"] = str(args.model)
    report["data"] = args.data or str(args.faces)
    print(json.dumps(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
