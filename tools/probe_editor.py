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

It is the cheap experiment behind the recipe's editor settings (docs/pfvit.md), not a recipe;
poker faces come from torch here, not from the exported graphs.

    python tools/probe_editor.py --init <run>/train/last.pt --ferplus /data/ferplus \
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
from training.config import IMAGENET_MEAN, IMAGENET_STD, EditorConfig
from training.data.ferplus import FERPlus
from training.data.joint import JointFaces
from training.data.transforms import FaceTransform
from training.engine import run_editor
from training.ferplus_config import FERPlusModelConfig
from training.fidelity import ssim
from training.judge import load_judge, poker_face_report
from training.realism import C2STConfig, c2st

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
    model: torch.nn.Module, faces01: torch.Tensor, targets: torch.Tensor, judge_path: Path, neutral: int, c2st_n: int
) -> dict[str, float]:
    """Mean change, SSIM to the input and the judge's neutral ratio on ``faces01 [N, 3, H, W]``;
    the two-sample tests on up to ``c2st_n`` faces a side."""
    model.eval()
    with torch.no_grad():
        poker = torch.cat(
            [model.poker_face(model.normalise(faces01[i : i + 256])) for i in range(0, len(faces01), 256)]
        )
    inputs, outputs = to_u8(faces01), to_u8(poker)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="PF-ViT stage checkpoint (grey FERPlus model)")
    ap.add_argument("--ferplus", required=True, help="the FERPlus folder (labels; docs/datasets.md)")
    ap.add_argument("--aligned", required=True, help="the faces aligned by the recipe (<run>/aligned)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an editor setting; repeatable")
    ap.add_argument("--rendered-repeat", type=int, default=RECIPE.editor_rendered_repeat)
    ap.add_argument("--test-faces", type=int, default=1500, help="FERPlus test faces scored (the first N)")
    ap.add_argument("--c2st-n", type=int, default=300, help="faces a side of the two-sample tests")
    ap.add_argument("--judge", type=Path, default=REPO / "models" / "pfvit-micro-ferplus" / "judge.pt")
    add_run_flags(ap, train_n=RECIPE.rendered_train, test_n=RECIPE.rendered_test)
    args = ap.parse_args(argv)
    overrides = editor_overrides(args.set)
    size, rendered, rendered_test, expressive = rendered_faces(args.init, args)

    def split(name: str, augment: bool) -> FERPlus:
        return FERPlus(args.ferplus, name, FaceTransform(image_size=size, augment=augment), images=args.aligned)

    train = JointFaces(
        split("train", True), rendered, greyscale=True, rendered_repeat=args.rendered_repeat, rendered_labels=False
    )
    test = split("test", False)
    n = min(args.test_faces, len(test))
    test_faces = torch.stack([test[i]["image"] for i in range(n)])
    test_targets = torch.tensor(test.targets[:n])
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
    model = result.model
    report = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        "steps": args.steps,
        **change_report(model, rendered_test.images, rendered_test.pokers, expressive),
        **photo_report(model, test_faces, test_targets, args.judge, list(test.labels).index("neutral"), args.c2st_n),
        "train_seconds": round(seconds, 1),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
