"""Do poker faces pass for real neutral faces? A classifier two-sample test on FERPlus test faces.

For each model folder: the poker faces of ``--n`` non-neutral FERPlus test faces against ``--n``
real neutral test faces (majority of ``label.csv``), both sent the way ``/v1/recognize`` and
``/v1/poker-face`` take a crop with ``aligned=true`` (resized to the model's input by the
service's code). A fresh CNN (``training.realism``) is trained on four folds and scored on the
fifth; the table gives the mean ROC AUC over the folds. The baseline row is the same test on the
expressive inputs themselves: a poker face should score well below it, towards 0.5.

    python -m tools.c2st_poker --ferplus /data/ferplus --model-dir models/pfvit-micro-ferplus \\
        --model-dir models/pfvit-micro-fer2013 --n 700
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from service.models import EmotionModel
from service.runtime import CPU
from training.data.ferplus import FERPlus
from training.data.transforms import FaceTransform
from training.realism import C2STConfig
from training.served_eval import poker_face_realism, realism_samples, served_crops

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ferplus", required=True, help="FERPlus folder (docs/datasets.md)")
    ap.add_argument(
        "--model-dir", action="append", default=[], help="model folder (repeat to score several in one run)"
    )
    ap.add_argument("--n", type=int, default=700, help="faces per side")
    ap.add_argument("--folds", type=int, default=C2STConfig.folds)
    ap.add_argument("--epochs", type=int, default=C2STConfig.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)
    model_dirs = args.model_dir or [str(REPO / "models" / "pfvit-micro-ferplus")]

    test = FERPlus(args.ferplus, "test", FaceTransform(image_size=48, augment=False), cache=False)
    try:
        neutral_idx, expressive_idx = realism_samples(
            np.asarray(test.targets), test.labels.index("neutral"), args.n, args.seed
        )
    except ValueError as err:
        ap.error(f"--n {args.n}: {err}")
    neutral = [test.load_face(i) for i in neutral_idx]
    expressive = [test.load_face(i) for i in expressive_idx]
    cfg = C2STConfig(folds=args.folds, epochs=args.epochs, seed=args.seed)

    rows = []
    for k, model_dir in enumerate(model_dirs):
        model = EmotionModel.from_dir(model_dir, providers=[CPU])
        scores = poker_face_realism(
            model, served_crops(model, neutral), served_crops(model, expressive), cfg, inputs=k == 0
        )
        if k == 0:
            rows.append({"set": "expressive inputs (baseline)", "model": "", **scores["inputs"]})
        rows.append({"set": "poker faces", "model": f"{model.card.name} {model.card.version}", **scores["poker_faces"]})

    print(f"C2ST against {args.n} real neutral FERPlus test faces; {args.folds}-fold ROC AUC (0.5: indistinguishable)")
    print("| set | model | ROC AUC | sd over folds |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['model']} | {r['auc']:.3f} | {r['auc_sd']:.3f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"n": args.n, "folds": args.folds, "seed": args.seed, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
