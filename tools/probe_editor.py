"""Probe of the editor stage: a short editor stage on a finished PF-ViT, scored on held-out
rendered identities and on FERPlus test photographs, with a realism test of its own.

Runs the editor stage (``training.engine.run_editor``) for a few hundred steps from a PF-ViT
stage checkpoint, on FERPlus train photos and rendered faces as the recipe mixes them, with any
of the stage's settings changed (``--set name=value``: the critic's weight, loss, learning rate,
D:G step ratio, the identity term ...). It prints one JSON line:

- on expressive rendered test faces, the PSNR gain of the poker face over the unchanged input
  and the cosine between the generated and the true change;
- on FERPlus test faces, the mean absolute change, the SSIM to the input and the judge's
  neutral ratio (the judge kept beside the shipped model);
- ``c2st_auc``: a two-sample test (``training.realism``) of the poker faces of expressive test
  faces against real neutral test faces (0.5: indistinguishable), and ``c2st_inputs_auc``, the
  same test on the unchanged inputs.

With ``--generator direct`` (or ``edit``) nothing trains: the same measures score the PF-ViT
stage's own generator path, the paper's poker face G(z_p + e_n) (``direct``) or the input plus
G's neutral-minus-faithful change (``edit``), the alternative to the editor.

It is the cheap experiment behind the recipe's editor settings (docs/pfvit.md), not a recipe;
poker faces come from torch here, not from the exported graphs.

    python -m tools.probe_editor --init <run>/refine/last.pt --ferplus /data/ferplus \
        --aligned <run>/aligned --set adv=0.5 --set gan=nonsat --set d_steps=2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.probe_poker_face import add_run_flags, change_report, rendered_faces, to_u8
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import IMAGENET_MEAN, IMAGENET_STD, EditorConfig
from training.data.ferplus import FERPlus
from training.data.joint import JointFaces
from training.data.transforms import FaceTransform
from training.engine import run_editor
from training.ferplus_config import FERPlusModelConfig
from training.fidelity import ssim
from training.judge import load_judge, poker_face_report
from training.realism import C2STConfig, c2st
from training.served_eval import difference_grid

REPO = Path(__file__).resolve().parent.parent
RECIPE = FERPlusModelConfig()  # the shipped recipe's data sizes are the defaults here
# What --set may not change: the probe sets these itself.
FIXED = {"out_dir", "init", "epochs", "max_steps_per_epoch", "batch_size", "seed", "threads", "progress", "device"}


def editor_overrides(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs as typed :class:`EditorConfig` fields (bools as true/false, tuples
    comma-separated)."""
    fields = {f.name: f for f in dataclasses.fields(EditorConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields or name in FIXED:
            raise SystemExit(f"--set {pair}: expected NAME=VALUE, NAME an editor setting but {sorted(FIXED)}")
        default = getattr(EditorConfig(), name)
        if isinstance(default, bool):
            value: Any = text.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            value = tuple(type(default[0])(v) for v in text.split(","))
        else:
            value = type(default)(text)
        out[name] = value
    return out


def photo_report(
    model: torch.nn.Module,
    faces01: torch.Tensor,
    targets: torch.Tensor,
    judge_path: Path,
    neutral: int,
    c2st_n: int,
    grid: Path | None = None,
) -> dict[str, float]:
    """Mean change, SSIM to the input and the judge's neutral ratio on ``faces01 [N, 3, H, W]``;
    the two-sample tests on up to ``c2st_n`` faces a side; with ``grid``, the first faces of each
    class, their poker faces and the difference, drawn there."""
    model.eval()
    with torch.no_grad():
        poker = torch.cat(
            [model.poker_face(model.normalise(faces01[i : i + 256])) for i in range(0, len(faces01), 256)]
        )
    inputs, outputs = to_u8(faces01), to_u8(poker)
    if grid is not None:
        difference_grid(inputs, outputs, targets.numpy(), int(targets.max()) + 1, grid)
    judge = load_judge(judge_path)
    report = poker_face_report(
        judge.model, judge.labels, faces01, poker, targets, list(IMAGENET_MEAN), list(IMAGENET_STD)
    )
    y = targets.numpy()
    real, expressive = np.flatnonzero(y == neutral)[:c2st_n], np.flatnonzero(y != neutral)[:c2st_n]
    return {
        "photo_mean_change": round(float(np.abs(outputs.astype(np.int16) - inputs).mean()), 3),
        "photo_ssim_to_input": round(float(ssim(outputs, inputs).mean()), 4),
        "judge_neutral_ratio": round(float(report["poker_neutral_ratio"]), 4),
        "c2st_auc": round(c2st(outputs[expressive], inputs[real], C2STConfig()).auc, 4),
        "c2st_inputs_auc": round(c2st(inputs[expressive], inputs[real], C2STConfig()).auc, 4),
        "c2st_n": int(min(len(real), len(expressive))),
    }


def last_steps(records: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, float]:
    """The mean of each logged term over ``records`` (the last steps): is the critic still
    telling the two sets apart at the end?"""
    return {
        f"last_{name}": round(float(np.mean([r[name] for r in records if name in r])), 4)
        for name in names
        if any(name in r for r in records)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="PF-ViT stage checkpoint (grey FERPlus model)")
    ap.add_argument("--ferplus", required=True, help="the FERPlus folder (labels; docs/datasets.md)")
    ap.add_argument("--aligned", required=True, help="the faces aligned by the recipe (<run>/aligned)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--generator",
        choices=("direct", "edit"),
        default="",
        help="train nothing: score the --init checkpoint's generator path in this poker mode",
    )
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an editor setting; repeatable")
    ap.add_argument(
        "--photo-augment",
        choices=("full", "geometry", "none"),
        default="full",
        help="the train photographs' augmentation: all of it, affine and flip alone, or none",
    )
    ap.add_argument("--rendered-repeat", type=int, default=RECIPE.editor_rendered_repeat)
    ap.add_argument("--test-faces", type=int, default=1500, help="FERPlus test faces scored (the first N)")
    ap.add_argument("--c2st-n", type=int, default=300, help="faces a side of the two-sample tests")
    ap.add_argument("--grid", type=Path, default=None, help="also draw the test faces' poker faces here (PNG)")
    ap.add_argument("--judge", type=Path, default=REPO / "models" / "pfvit-micro-ferplus" / "judge.pt")
    add_run_flags(ap, train_n=RECIPE.rendered_train, test_n=RECIPE.rendered_test)
    args = ap.parse_args(argv)
    overrides = editor_overrides(args.set)
    size, rendered, rendered_test, expressive = rendered_faces(args.init, args)

    def split(name: str, augment: str) -> FERPlus:
        transform = FaceTransform(image_size=size, augment=augment != "none")
        transform = transform.geometry_only() if augment == "geometry" else transform
        return FERPlus(args.ferplus, name, transform, images=args.aligned)

    train = JointFaces(
        split("train", args.photo_augment),
        rendered,
        greyscale=True,
        rendered_repeat=args.rendered_repeat,
        rendered_labels=False,
    )
    test = split("test", "none")
    n = min(args.test_faces, len(test))
    test_faces = torch.stack([test[i]["image"] for i in range(n)])
    test_targets = torch.tensor(test.targets[:n])
    if args.generator:
        payload = load_checkpoint(args.init)
        payload["model_config"] = {**payload["model_config"], "poker_mode": args.generator, "poker_luma": False}
        model, _ = model_from_checkpoint(payload)
        steps: list[dict[str, Any]] = []
        seconds = 0.0
    else:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            result = run_editor(
                EditorConfig(
                    out_dir=out,
                    init=args.init,
                    epochs=1,
                    max_steps_per_epoch=args.steps,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    threads=args.threads,
                    progress=False,
                    device="cpu",
                    **overrides,
                ),
                train,
            )
            seconds = time.perf_counter() - t0
            steps = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines() if '"summary"' not in x]
        model = result.model
    report = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        **(
            {"generator": args.generator}
            if args.generator
            else {"steps": args.steps, "photo_augment": args.photo_augment}
        ),
        **change_report(model, rendered_test.images, rendered_test.pokers, expressive),
        **photo_report(
            model, test_faces, test_targets, args.judge, list(test.labels).index("neutral"), args.c2st_n, args.grid
        ),
        **last_steps(steps[-50:], ("adv", "d", "total")),
        "train_seconds": round(seconds, 1),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
