"""Probe of the editor stage's critic alone: can it tell a fixed editor's poker faces from real
neutral photographs, when the editor does not move?

In the adversarial editor stage the critic's loss stays near chance (docs/pfvit.md), while a
fresh two-sample classifier separates the finished editor's poker faces almost perfectly. That
is either a critic too weak to see the difference or a game the editor keeps winning by moving.
This probe takes the editor out of the game: it draws FERPlus train photos through the stage's
own photo augmentation (affine and flip), makes the poker faces of the expressive ones once with
a finished editor checkpoint, and trains a fresh critic of the stage (:func:`build_critic`,
with the stage's loss and optimiser settings) on real neutral photos against them, batch by
batch as the stage does. It prints one JSON line per critic and side: the mean loss over the
last 100 steps and the ROC AUC on held-out faces (0.5: the critic sees nothing). The same
critic trained against the unchanged expressive photos is the baseline.

    python -m tools.probe_critic --checkpoint <run>/editor/last.pt --ferplus <ferplus> \
        --aligned <run>/aligned --critic face:16 --critic patch:32:pool
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Literal

import numpy as np
import torch

from training.adversarial import discriminator_adv_loss
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import EditorConfig
from training.data.ferplus import FERPlus
from training.data.transforms import FaceTransform
from training.distributed import setup
from training.editing import build_critic
from training.realism import roc_auc
from training.stages import critic_optimizer


def critic_config(spec: str, lr: float, batch_size: int = 64) -> EditorConfig:
    """``arch:width[:pool]`` (``face:16``, ``patch:32:pool``) -> the stage config of that critic,
    at base rate ``lr`` and the stage's ``batch_size``."""
    arch, width, *rest = spec.split(":")
    if rest not in ([], ["pool"]) or arch not in ("face", "patch"):
        raise SystemExit(f"--critic {spec}: expected face:WIDTH or patch:WIDTH[:pool]")
    kind: Literal["patch", "face"] = "face" if arch == "face" else "patch"
    base = EditorConfig(gan="nonsat", d_blr=lr, batch_size=batch_size)
    return replace(base, d_arch=kind, d_width=int(width), d_pool=bool(rest))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a finished editor stage checkpoint (<run>/editor/last.pt)")
    ap.add_argument("--ferplus", required=True)
    ap.add_argument("--aligned", required=True, help="the faces aligned by the recipe (<run>/aligned)")
    ap.add_argument("--critic", action="append", default=[], metavar="ARCH:WIDTH[:pool]")
    ap.add_argument("--d-blr", type=float, default=1e-2, help="base rate, scaled by the batch / 256 as in the stage")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64, help="the stage's batch; its photos split as they come")
    ap.add_argument("--n", type=int, default=1500, help="faces drawn a side")
    ap.add_argument("--held-out", type=int, default=300, help="of those, the last ones, scored and never trained on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 < args.held_out < args.n:
        raise SystemExit("--held-out must leave faces to train on")
    specs = args.critic or ["face:16"]
    configs = [critic_config(spec, args.d_blr, args.batch_size) for spec in specs]  # bad specs fail here, not later
    ctx = setup("cpu", args.threads)
    torch.manual_seed(args.seed)
    model, _ = model_from_checkpoint(load_checkpoint(args.checkpoint))
    model.eval()
    if model.editor is None:
        raise SystemExit(f"{args.checkpoint} has no editor")
    photos = FERPlus(
        args.ferplus,
        "train",
        FaceTransform(image_size=model.config.image_size, augment=True).geometry_only(),
        images=args.aligned,
    )
    classes = np.asarray(photos.targets)
    neutral = list(photos.labels).index("neutral")
    rng = np.random.default_rng(args.seed)
    pools = {side: np.flatnonzero((classes == neutral) == (side == "real")) for side in ("real", "expressive")}
    if min(len(pool) for pool in pools.values()) < args.n:
        raise SystemExit(f"--n {args.n}: the train split has {[len(p) for p in pools.values()]} faces (neutral, other)")
    picks = {side: rng.choice(pool, args.n, replace=False) for side, pool in pools.items()}
    with torch.no_grad():
        faces = {
            side: model.normalise(torch.stack([photos[int(i)]["image"] for i in idx])) for side, idx in picks.items()
        }
        poker = torch.cat(
            [model.normalise(model.poker_face(faces["expressive"][i : i + 256])) for i in range(0, args.n, 256)]
        )
    view = {  # what the critic reads: the luma, for a grey model
        name: model.colour(x)[:, : model.editor.channels]
        for name, x in (("real", faces["real"]), ("poker", poker), ("inputs", faces["expressive"]))
    }
    held = args.n - args.held_out
    share = float((classes == neutral).mean())  # the share of a batch's photos that is real
    n_real = max(1, round(args.batch_size * share))
    n_fake = args.batch_size - n_real
    for spec, cfg in zip(specs, configs):
        for side in ("poker", "inputs"):
            torch.manual_seed(args.seed)
            critic = build_critic(model, cfg)
            opt = critic_optimizer(critic, cfg, ctx)  # the stage's: AdamW, its rate, betas and decay
            t0, losses = time.perf_counter(), []
            for _ in range(args.steps):
                i, j = torch.randint(0, held, (n_real,)), torch.randint(0, held, (n_fake,))
                logits = critic(torch.cat([view["real"][i], view[side][j]])).flatten(1)
                loss = discriminator_adv_loss(logits[:n_real], logits[n_real:], cfg.gan)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            with torch.no_grad():
                fake_scores = critic(view[side][held:]).flatten(1).mean(1)
                real_scores = critic(view["real"][held:]).flatten(1).mean(1)
            scores = -torch.cat([fake_scores, real_scores]).numpy()  # high = fake
            labels = np.r_[np.ones(len(fake_scores)), np.zeros(len(real_scores))]
            print(
                json.dumps(
                    {
                        "critic": spec,
                        "against": side,
                        "steps": args.steps,
                        "lr": opt.param_groups[0]["lr"],
                        "last100_loss": round(float(np.mean(losses[-100:])), 4),
                        "heldout_auc": round(roc_auc(scores, labels), 4),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
