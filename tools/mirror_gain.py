"""What test-time augmentation in the recognition graph gains a trained checkpoint: accuracy
plain, with the mirror average, and with the mirror average and shifted views (``--shift``),
per split, on an aligned data set (the reason behind ``mirror_average`` and ``shift_px`` at
export). ``--log-prior`` and ``--tau`` score the logit-adjusted decision as well.

    python tools/mirror_gain.py --checkpoint <run>/refine/last.pt \
        --data ferplus:/data/ferplus,images=<run>/aligned --splits val --shift 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from training.checkpoint import model_from_checkpoint
from training.data import build_data
from training.export import RecognitionGraph


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="data spec, e.g. ferplus:PATH,images=<run>/aligned")
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--shift", type=int, nargs="*", default=[], help="also the mirror average with views shifted by N px"
    )
    ap.add_argument("--calibration", default="", help="a recipe's calibration.json: also score its logit adjustment")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = model_from_checkpoint(args.checkpoint)
    model.eval()
    graphs = {"accuracy": RecognitionGraph(model), "mirror_average_accuracy": RecognitionGraph(model, True)}
    for px in args.shift:
        graphs[f"mirror_shift{px}_accuracy"] = RecognitionGraph(model, True, shift_px=px)
    adjust = None
    if args.calibration:
        record = json.loads(Path(args.calibration).read_text())
        adjust = float(record["tau"]) * torch.log(torch.tensor(record["prior"]).clamp_min(1e-6))
    for split in args.splits:
        data = build_data(args.data, split, model.config.image_size, augment=False)
        right = {name: 0 for name in graphs} | {f"{name}_adjusted": 0 for name in graphs if adjust is not None}
        seen = 0
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=256):
                x, y = model.normalise(batch["image"]), batch["label"]
                for name, graph in graphs.items():
                    logits = graph(x)[0]
                    right[name] += int((logits.argmax(1) == y).sum())
                    if adjust is not None:
                        right[f"{name}_adjusted"] += int(((logits - adjust).argmax(1) == y).sum())
                seen += len(y)
        print(
            json.dumps({"split": split, "faces": seen, **{k: round(v / seen, 4) for k, v in right.items()}}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
