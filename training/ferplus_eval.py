"""The FERPlus recipe's evaluation: the exported files scored through the service's code, the
separation ablation, the judge, and the card, report and pictures written from them."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.card import load_card, write_card
from service.models import EmotionModel
from training import served_eval
from training.calibration import balanced_scores, checkpoint_logits
from training.checkpoint import load_checkpoint
from training.config import IMAGENET_MEAN, IMAGENET_STD
from training.data.ferplus import FERPlus
from training.ferplus_config import (
    DATA_TERMS,
    JUDGE_FILE,
    SPLIT_FOLDERS,
    FERPlusModelConfig,
    aligned_dir,
    ferplus,
    judge_config,
    recogniser_checkpoint,
    recogniser_finished,
    rendered_faces,
    rendered_spec,
)
from training.ferplus_report import publish_report
from training.judge import JudgeResult, load_judge, poker_face_report, save_judge, train_judge
from training.realism import C2STConfig
from training.recipe import MTCNN_DIR


def shipped_judge(cfg: FERPlusModelConfig) -> JudgeResult:
    """The judge kept beside the model (``judge.pt``); trained (seeded) and kept there when missing."""
    path = Path(cfg.model_dir) / JUDGE_FILE
    if path.is_file():
        return load_judge(path)
    judge = train_judge(
        judge_config(cfg),
        ferplus(cfg, "train", augment=True),
        ferplus(cfg, "val", augment=False),
        list(IMAGENET_MEAN),
        list(IMAGENET_STD),
    )
    save_judge(judge, path)
    return judge


def ablation_scores(cfg: FERPlusModelConfig, test: FERPlus) -> dict[str, Any] | None:
    """Accuracy with and without separation: both recognisers' final checkpoints (PF-ViT stage
    and warm restart) on the aligned test faces, no mirror averaging and no logit adjustment, so
    only the stage differs."""
    if not (recogniser_finished(cfg, True) and recogniser_finished(cfg, False)):
        return None  # a stage not yet run, or not finished: its checkpoint would not be the comparison
    paths = {
        "with_separation": recogniser_checkpoint(cfg, True),
        "without_separation": recogniser_checkpoint(cfg, False),
    }
    y = np.asarray(test.targets)
    scores: dict[str, Any] = {}
    for name, path in paths.items():
        logits = checkpoint_logits(path, test, mirror_average=False)
        acc, macro = balanced_scores(logits, y, logits.shape[1])
        scores[name] = {
            "accuracy": acc,
            "macro_recall": macro,
            "val_accuracy": float(
                load_checkpoint(path).get("extra", {}).get("last", {}).get("val_accuracy", float("nan"))
            ),
        }
    return scores


def realism(
    cfg: FERPlusModelConfig, model: EmotionModel, crops: list[np.ndarray], y: np.ndarray, neutral: int
) -> dict[str, Any] | None:
    """The two-sample test of ``tools/c2st_poker.py`` on the same faces: ``cfg.realism_n`` test
    crops of each side as sent with ``aligned=true``, drawn with the recipe's seed."""
    if cfg.realism_n <= 0:
        return None
    neutral_idx, expressive_idx = served_eval.realism_samples(y, neutral, cfg.realism_n, cfg.seed)
    return served_eval.poker_face_realism(
        model,
        served_eval.served_crops(model, [crops[i] for i in neutral_idx]),
        served_eval.served_crops(model, [crops[i] for i in expressive_idx]),
        C2STConfig(seed=cfg.seed),
    )


def evaluate(cfg: FERPlusModelConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The exported files through the service's code, on FERPlus test (majority of ``label.csv``,
    and of ``fer2013new.csv`` for comparison)."""
    model = served_eval.load_emotion_model(cfg.model_dir, threads=cfg.threads)
    labels = model.labels
    metrics: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for votes in ("label", "new"):
        aligned = ferplus(cfg, "test", augment=False, votes=votes)
        y = np.asarray(aligned.targets, dtype=np.int64)
        faces = np.stack([aligned.load_face(i) for i in range(len(aligned))])
        part = {"aligned": served_eval.score(y, served_eval.recognise_crops(model, faces), labels)}
        if votes == "label":
            raw = ferplus(cfg, "test", augment=False, aligned=False, votes=votes)
            crops = [raw.load_face(i) for i in range(len(raw))]
            photos = served_eval.recognise_photos(model, MTCNN_DIR, crops, cfg.pad_px, cfg.upscale, threads=cfg.threads)
            part["photos"] = served_eval.score(y, photos.predictions, labels)
            part["raw_crops"] = served_eval.score(y, served_eval.recognise_crops(model, np.stack(crops)), labels)
            metrics["realism"] = realism(cfg, model, crops, y, labels.index("neutral"))
            arrays.update(faces=faces, y=y)
            metrics["ablation"] = ablation_scores(cfg, aligned)
        metrics[votes] = part

    faces, y = arrays["faces"], arrays["y"]
    pokers = served_eval.poker_faces(model, faces)
    metrics["poker_face_ferplus"] = {**served_eval.change_measures(faces, pokers), "num_samples": len(faces)}
    judge = shipped_judge(cfg)

    def to01(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0

    metrics["judge"] = {
        "val_accuracy": judge.val_accuracy,
        **poker_face_report(
            judge.model,
            judge.labels,
            to01(faces),
            to01(pokers),
            torch.from_numpy(y),
            list(IMAGENET_MEAN),
            list(IMAGENET_STD),
        ),
    }
    rendered = rendered_faces(cfg, "test")
    r_faces = rendered.images.permute(0, 2, 3, 1).numpy()
    r_truth = rendered.pokers.permute(0, 2, 3, 1).numpy()
    expressive = np.asarray(rendered.targets) != list(rendered.labels).index("neutral")
    metrics["poker_face_rendered"] = served_eval.rendered_fidelity(model, r_faces, r_truth, expressive)
    return metrics, {"faces": faces, "pokers": pokers, "labels": y}


def publish(cfg: FERPlusModelConfig, timings: dict[str, float]) -> dict[str, Any]:
    """Evaluate the exported model; write metrics, card numbers, report and pictures."""
    out = Path(cfg.out_dir)
    metrics, arrays = evaluate(cfg)
    counts = json.loads((aligned_dir(cfg) / "summary.json").read_text())["counts"]
    metrics["alignment"] = {split: c for split, c in counts.items() if split in SPLIT_FOLDERS}
    metrics["calibration"] = (
        json.loads((out / "calibration.json").read_text()) if (out / "calibration.json").is_file() else None
    )
    metrics["timings"] = timings
    metrics["recipe"] = asdict(cfg)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    model_dir = Path(cfg.model_dir)
    card = load_card(model_dir)
    training = dict(card.training)
    training["data"] = (
        f"FERPlus: FER2013's original 48 px images with the majority and vote distribution of ten annotators per face "
        f"({cfg.votes} votes: {'each split folder label.csv' if cfg.votes == 'label' else 'fer2013new.csv'}); "
        "Train 25,045 / Valid (PublicTest) 3,191 / Test (PrivateTest) 3,137 faces under the majority protocol, "
        f"aligned at {cfg.image_size} px by the service's MTCNN and 5-point template after edge-padding "
        f"{cfg.pad_px} px and upscaling x{cfg.upscale:g}; plus {cfg.rendered_train} rendered faces "
        f"({rendered_spec(cfg)}, training/render) "
        "that teach the generator and no class. " + DATA_TERMS
    )
    keep = (
        "label",
        "new",
        "poker_face_ferplus",
        "judge",
        "realism",
        "poker_face_rendered",
        "alignment",
        "ablation",
        "calibration",
    )
    training["metrics"] = json.loads(json.dumps({k: metrics[k] for k in keep}))
    for part in ("label", "new"):
        for view in training["metrics"][part].values():
            view.pop("confusion_matrix", None)
    training["reproduce"] = (
        "make train-default FERPLUS=/path/to/ferplus  (python -m training.ferplus_model --ferplus PATH)"
    )
    training["evaluate"] = "make evaluate-default FERPLUS=/path/to/ferplus"
    training["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    write_card(replace(card, training=training), model_dir)
    publish_report(metrics, load_card(model_dir).labels, arrays, out, Path(cfg.docs_dir))
    print(json.dumps({k: metrics[k] for k in ("label", "ablation", "timings")}, indent=1, default=str)[:4000])
    return metrics
