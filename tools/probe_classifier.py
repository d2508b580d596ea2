"""Classification-only probe of a PF-ViT encoder on a dataset: how fast does recognition learn?

Trains E + S_e + H alone (no generator, no discriminator) with AdamW and a one-cycle cosine
schedule, label smoothing 0.1 and the training augmentations, and prints one JSON line per
epoch with the validation accuracy and the epoch's seconds. It is the cheap experiment behind
the architecture choices in docs/pfvit.md (stem, size, MAE initialisation), not a recipe.

    python tools/probe_classifier.py --data fer2013:/data/fer2013-aligned64 --stem conv --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from training.config import STEMS
from training.data import build_data
from training.sizes import build_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data spec, e.g. fer2013:PATH (an aligned FER2013 folder)")
    ap.add_argument("--model", default="micro")
    ap.add_argument("--stem", choices=STEMS, default="conv")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--greyscale", action="store_true")
    ap.add_argument("--init", default="", help="MAE checkpoint whose encoder starts the probe")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=0, help="steps per epoch at most (0: all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        train = build_data(args.data, "train", args.image_size, augment=True)
        val = build_data(args.data, "val", args.image_size, augment=False)
    except ValueError as exc:
        ap.error(str(exc))
    labels = list(train.labels)
    model = build_model(args.model, image_size=args.image_size, stem=args.stem, greyscale=args.greyscale, labels=labels)
    if args.init:
        state = torch.load(args.init, map_location="cpu", weights_only=False)["model"]
        model.load_state_dict({k: v for k, v in state.items() if k.startswith("encoder.")}, strict=False)
    params = [p for part in (model.encoder, model.separator, model.head) for p in part.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps = min(len(loader), args.max_steps) if args.max_steps else len(loader)
    total = steps * args.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / max(1, total // 10)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
    )
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            loss = F.cross_entropy(model(model.normalise(batch["image"])), batch["label"], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        seconds = time.perf_counter() - t0
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for batch in DataLoader(val, batch_size=256):
                correct += int((model(model.normalise(batch["image"])).argmax(1) == batch["label"]).sum())
                seen += len(batch["label"])
        print(
            json.dumps(
                {
                    "epoch": epoch + 1,
                    "stem": args.stem,
                    "model": args.model,
                    "val_accuracy": round(correct / seen, 4),
                    "train_seconds": round(seconds, 1),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
