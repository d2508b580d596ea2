"""Probe of the editor stage's weights: a short editor stage on a finished PF-ViT, scored on
held-out rendered identities and on aligned FER2013 test faces.

Runs the editor stage (``training.engine.run_editor``) for a few hundred steps from a PF-ViT
stage checkpoint, on FER2013 train photos and rendered faces as the recipe mixes them, then
prints one JSON line: on expressive rendered test faces, the PSNR gain of the poker face over the
unchanged input and the cosine between the generated and the true change; on FER2013 test faces,
the mean absolute change, the SSIM to the input and the judge's neutral ratio (the judge that the
shipped model keeps beside it). It is the cheap experiment behind the recipe's editor weights
(docs/pfvit.md), not a recipe; poker faces come from torch here, not from exported graphs.

    python tools/probe_editor.py --init runs/fer-model/train/last.pt --fer2013 runs/fer-model/aligned --sparsity 0.5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tools.probe_poker_face import add_run_flags, change_report, rendered_faces, to_u8
from training.config import IMAGENET_MEAN, IMAGENET_STD, EditorConfig
from training.data.fer2013 import FER2013
from training.data.joint import JointFaces
from training.data.transforms import FaceTransform
from training.engine import run_editor
from training.fer_model import FERModelConfig
from training.fidelity import ssim
from training.judge import load_judge, poker_face_report

REPO = Path(__file__).resolve().parent.parent
RECIPE = FERModelConfig()  # the shipped recipe's data sizes are the defaults here


def photo_report(
    model: torch.nn.Module, faces01: torch.Tensor, targets: torch.Tensor, judge_path: Path
) -> dict[str, float]:
    """Mean change, SSIM to the input and the judge's neutral ratio on ``faces01 [N, 3, H, W]``."""
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
    return {
        "photo_mean_change": round(float(np.abs(outputs.astype(np.int16) - inputs).mean()), 3),
        "photo_ssim_to_input": round(float(ssim(outputs, inputs).mean()), 4),
        "judge_neutral_ratio": round(float(report["poker_neutral_ratio"]), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="PF-ViT stage checkpoint (grey FER2013 model)")
    ap.add_argument("--fer2013", required=True, help="FER2013 aligned by the recipe (<run>/aligned)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--poker-sup", type=float, default=EditorConfig.poker_sup)
    ap.add_argument("--cyc-neutral", type=float, default=EditorConfig.cyc_neutral)
    ap.add_argument("--sparsity", type=float, default=EditorConfig.sparsity)
    ap.add_argument("--rendered-repeat", type=int, default=RECIPE.editor_rendered_repeat)
    ap.add_argument("--test-faces", type=int, default=1000, help="FER2013 PrivateTest faces scored (the first N)")
    ap.add_argument("--judge", type=Path, default=REPO / "models" / "pfvit-micro-fer2013" / "judge.pt")
    add_run_flags(ap, train_n=RECIPE.rendered_train, test_n=RECIPE.rendered_test)
    args = ap.parse_args(argv)
    size, rendered, rendered_test, expressive = rendered_faces(args.init, args)
    train = JointFaces(
        FER2013(args.fer2013, "train", FaceTransform(image_size=size, augment=True)),
        rendered,
        greyscale=True,
        rendered_repeat=args.rendered_repeat,
    )
    test = FER2013(args.fer2013, "test", FaceTransform(image_size=size, augment=False))
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
                poker_sup=args.poker_sup,
                cyc_neutral=args.cyc_neutral,
                sparsity=args.sparsity,
                seed=args.seed,
                threads=args.threads,
                progress=False,
                device="cpu",
            ),
            train,
        )
        seconds = time.perf_counter() - t0
    model = result.model
    report = {
        "poker_sup": args.poker_sup,
        "cyc_neutral": args.cyc_neutral,
        "sparsity": args.sparsity,
        "steps": args.steps,
        **change_report(model, rendered_test.images, rendered_test.pokers, expressive),
        **photo_report(model, test_faces, test_targets, args.judge),
        "train_seconds": round(seconds, 1),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
