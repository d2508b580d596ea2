"""Probe of the generator's supervised poker-face term: how much of the true expression change
does a short PF-ViT stage on rendered faces learn?

Renders train and held-out test identities (``training.render``, whose true poker faces are
known), runs the PF-ViT stage on the rendered faces alone from an MAE checkpoint for a few
hundred steps, and prints one JSON line with, on the expressive test faces: the PSNR gain of
the poker face over the unchanged input, and the cosine between the generated and the true
change. It is the cheap experiment behind the recipe's ``poker_sup_loss`` choice
(docs/pfvit.md), not a recipe.

    python tools/probe_poker_face.py --init runs/fer-model/pretrain/last.pt --loss l2 --steps 150
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from training.checkpoint import model_from_checkpoint
from training.config import LossWeights, TrainConfig
from training.data.spec import DataSpec
from training.default_model import InMemoryFaces, render_split
from training.engine import run_train
from training.fidelity import psnr


def to_u8(images01: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, H, W, 3]`` uint8, as the fidelity measures take them."""
    return (images01.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def change_report(
    model: torch.nn.Module, faces: torch.Tensor, truth: torch.Tensor, expressive: np.ndarray
) -> dict[str, float]:
    """PSNR gain over the unchanged input and cosine of generated vs true change, on
    ``faces``/``truth`` ``[N, 3, H, W]`` uint8 (expressive items only)."""
    model.eval()
    with torch.no_grad():
        poker = model.poker_face(model.normalise(faces.float() / 255.0))
    gen, tru, inp = to_u8(poker), truth.permute(0, 2, 3, 1).numpy(), faces.permute(0, 2, 3, 1).numpy()
    gain = psnr(gen[expressive], tru[expressive]).mean() - psnr(inp[expressive], tru[expressive]).mean()
    d_gen = (gen.astype(np.float64) - inp)[expressive].ravel()
    d_true = (tru.astype(np.float64) - inp)[expressive].ravel()
    cosine = float(d_gen @ d_true / max(1e-9, np.linalg.norm(d_gen) * np.linalg.norm(d_true)))
    return {
        "psnr_gain_db": round(float(gain), 3),
        "change_cosine": round(cosine, 4),
        "mean_change": round(float(np.abs(d_gen).mean()), 3),
        "true_mean_change": round(float(np.abs(d_true).mean()), 3),
    }


def add_run_flags(ap: argparse.ArgumentParser, train_n: int, test_n: int) -> None:
    """The flags both poker-face probes share: rendered faces, batch, threads, seed."""
    ap.add_argument("--train-n", type=int, default=train_n, help="rendered training faces")
    ap.add_argument("--test-n", type=int, default=test_n, help="rendered held-out faces scored")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="rendering processes")
    ap.add_argument("--seed", type=int, default=0)


def rendered_faces(init: str, args: argparse.Namespace) -> tuple[int, InMemoryFaces, InMemoryFaces, np.ndarray]:
    """``(image size, train, held-out test, expressive mask of test)``: rendered faces at the
    input size of the checkpoint ``init``, as :func:`add_run_flags` asks for them."""
    size = int(torch.load(init, map_location="cpu", weights_only=False)["model_config"]["image_size"])
    spec = DataSpec.of("rendered", "", seed=args.seed, size=size, n=args.train_n, test_n=args.test_n)
    train, test = render_split(spec, "train", size, args.workers), render_split(spec, "test", size, args.workers)
    return size, train, test, np.asarray(test.targets) != list(test.labels).index("neutral")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="MAE pre-training checkpoint (its architecture is used)")
    ap.add_argument("--arch", default="poker_mode=edit", help="architecture overrides")
    ap.add_argument("--loss", choices=("l1", "l2"), default="l1", help="poker_sup_loss")
    ap.add_argument("--poker-sup", type=float, default=2.0, help="weight of the supervised term")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--blr", type=float, default=4e-3)
    add_run_flags(ap, train_n=4800, test_n=400)
    args = ap.parse_args(argv)
    _, train, test, expressive = rendered_faces(args.init, args)
    steps_per_epoch = len(train) // args.batch_size
    epochs = max(1, -(-args.steps // steps_per_epoch))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run_train(
            TrainConfig(
                out_dir=out,
                init=args.init,
                arch=args.arch,
                epochs=epochs,
                warmup_epochs=min(1.0, epochs / 4),
                batch_size=args.batch_size,
                blr=args.blr,
                d_blr=5e-4,
                grad_clip=1.0,
                label_smoothing=0.1,
                weights=LossWeights(cls=2.0, poker_sup=args.poker_sup, cyc_neutral=0.5),
                poker_sup_loss=args.loss,
                eval_every=0,
                seed=args.seed,
                threads=args.threads,
                progress=False,
                device="cpu",
            ),
            train,
        )
        seconds = time.perf_counter() - t0
        model, _ = model_from_checkpoint(f"{out}/last.pt")
    report = change_report(model, test.images, test.pokers, expressive)
    print(
        json.dumps(
            {
                "loss": args.loss,
                "poker_sup": args.poker_sup,
                "steps": epochs * steps_per_epoch,
                **report,
                "train_seconds": round(seconds, 1),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
