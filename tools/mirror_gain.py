"""What averaging each face with its mirror image gains a trained checkpoint: accuracy with and
without it, per split, on an aligned data set (the reason behind ``--mirror-average`` at export).

    python tools/mirror_gain.py --checkpoint runs/fer-model/train/last.pt --data fer2013:runs/fer-model/aligned
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader

from training.checkpoint import model_from_checkpoint
from training.data import build_data
from training.export import RecognitionGraph


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="data spec, e.g. fer2013:PATH (an aligned FER2013 folder)")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint)
    model.eval()
    plain_graph, mirror_graph = (
        RecognitionGraph(model).eval(),
        RecognitionGraph(model, mirror_average=True).eval(),
    )  # what export ships
    for split in args.splits:
        data = build_data(args.data, split, model.config.image_size, augment=False)
        plain = mirrored = seen = 0
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=256):
                x, y = model.normalise(batch["image"]), batch["label"]
                plain += int((plain_graph(x)[0].argmax(1) == y).sum())
                mirrored += int((mirror_graph(x)[0].argmax(1) == y).sum())
                seen += len(y)
        print(
            json.dumps(
                {
                    "split": split,
                    "faces": seen,
                    "accuracy": round(plain / seen, 4),
                    "mirror_average_accuracy": round(mirrored / seen, 4),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
