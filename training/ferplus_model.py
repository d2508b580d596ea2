"""Reproduce the shipped default model: PF-ViT (micro, 48 px) on FERPlus, eight classes.

    python -m training.ferplus_model --ferplus /data/ferplus            # the shipped recipe
    python -m training.ferplus_model --ferplus /data/ferplus --quick    # a few-minute smoke run
    python -m training.ferplus_model --ferplus /data/ferplus --evaluate-only

``--ferplus`` holds ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/`` with their
``label.csv`` (or a ``data/`` folder with them): FER2013's original 48 px pixels as PNG files and
the votes of ten annotators per face (docs/datasets.md). Labels are the majority of
``label.csv``, the file Microsoft's own training code reads; ``--votes new`` takes
``fer2013new.csv`` instead. Classes train on the vote distributions (soft targets).

Steps, all seeded; each resumes from its own files when interrupted:

1. ``align``: every face through the service's detector and aligner (``pfvit-align-dataset``):
   the 48 px crop edge-padded by 24 px and upscaled x3, as a photo of it reaches the service;
   faces it cannot find get one fixed transform (the detected faces' mean landmarks);
2. ``pretrain``: MAE pre-training of encoder and generator on FERPlus train and validation
   faces (labels unused) plus rendered faces;
3. ``train``: the PF-ViT stage on FERPlus train (vote distributions) jointly with rendered faces,
   whose true poker faces supervise the generator; rendered faces teach no class; then
   ``refine``, a warm restart: the same stage continues from its end (D included) under a new
   warm-up and cosine schedule at a lower peak learning rate;
4. ``editor``: the convolutional expression editor learns the poker faces on the frozen model;
5. ``calibrate``: post-hoc logit adjustment, ``logits - tau * log(prior)``, with tau chosen on
   the validation faces, folded into the head's bias; then export of both graphs with the card;
6. ``judge``: a plain CNN trained on FERPlus train only, never with the generator, that reads
   the poker faces;
7. evaluate the exported files through the service's code (``training.served_eval``); the numbers
   go into the card and ``docs/default-model.md`` (``training.ferplus_report``);
8. ``ablation``: the PF-ViT stage and its warm restart again with separation off (E, S_e and H
   on classification alone), same initialisation, data, sampler and schedules; then step 7
   again, with it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.card import load_card, write_card
from training import served_eval
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.cli import parse_config
from training.config import IMAGENET_MEAN, IMAGENET_STD, EditorConfig, LossWeights, PretrainConfig, TrainConfig
from training.data.ferplus import FERPlus
from training.data.joint import JointFaces
from training.data.spec import DataSpec
from training.data.transforms import FaceTransform
from training.default_model import InMemoryFaces, previous_timings, render_split
from training.engine import run_editor, run_pretrain, run_train
from training.export import export_checkpoint
from training.ferplus_report import publish_report
from training.judge import JudgeConfig, JudgeResult, load_judge, poker_face_report, save_judge, train_judge
from training.recipe import MTCNN_DIR, align_photos, recipe_flags, resume_or_skip, stage_seconds

REPO = Path(__file__).resolve().parent.parent
# The judge that scored the model's poker faces, kept beside it (never in the service image).
JUDGE_FILE = "judge.pt"
SPLIT_FOLDERS = ("FER2013Train", "FER2013Valid", "FER2013Test")
DATA_TERMS = (
    "FER2013's images (ICML 2013 representation-learning challenge, Goodfellow et al.) were released for research: "
    "check their terms before any other use of this model. The FERPlus labels (Microsoft) are MIT-licensed."
)


@dataclass(frozen=True)
class FERPlusModelConfig:
    """The shipped recipe. Args are the command-line flags of the same names.

    Args:
        ferplus: the FERPlus folder (split folders with ``label.csv``, or ``data/`` holding them).
        votes: "label" (each split's ``label.csv``) or "new" (``fer2013new.csv``) trains.
        refine_epochs: epochs of the warm restart that continues the PF-ViT stage (0 = none).
        refine_blr: its peak learning rate (the PF-ViT stage's is ``train_blr``).
        logit_adjust_taus: the grid tau is chosen from on the validation faces.
        ablation: also train the separation ablation (step 7).
    """

    ferplus: str = ""
    votes: str = "label"
    out_dir: str = "runs/ferplus-model"
    model_dir: str = str(REPO / "models" / "pfvit-micro-ferplus")
    docs_dir: str = str(REPO / "docs")
    name: str = "pfvit-micro-ferplus"
    version: str = "2.1.0"
    image_size: int = 48
    stem: str = "deepconv"
    pad_px: int = 24
    upscale: float = 3.0
    seed: int = 0
    judge_epochs: int = 5
    pretrain_epochs: int = 8
    pretrain_blr: float = 1.5e-3
    mask_ratio: float = 0.75
    train_epochs: int = 16
    batch_size: int = 64
    train_blr: float = 4e-3
    refine_epochs: int = 12
    refine_blr: float = 2e-3
    d_blr: float = 5e-4
    grad_clip: float = 1.0
    cls_weight: float = 2.0
    poker_sup_weight: float = 2.0
    poker_sup_loss: str = "l1"
    cyc_neutral_weight: float = 0.5
    label_smoothing: float = 0.05
    # Rendered faces beside FERPlus's 25,045 train photos: about one sample in eleven.
    rendered_train: int = 2400
    rendered_test: int = 800
    mirror_average: bool = True
    logit_adjust_taus: str = "0,0.25,0.5,0.75,1,1.25,1.5"
    ablation: bool = True
    editor_epochs: int = EditorConfig.epochs
    editor_rendered_repeat: int = 3
    editor_poker_sup: float = EditorConfig.poker_sup
    editor_cyc_neutral: float = EditorConfig.cyc_neutral
    editor_sparsity: float = EditorConfig.sparsity
    render_workers: int = 0  # 0 = one per core
    device: str = "auto"
    threads: int = 0


QUICK = dict(
    judge_epochs=1,
    pretrain_epochs=1,
    train_epochs=1,
    refine_epochs=1,
    editor_epochs=1,
    rendered_train=256,
    rendered_test=64,
)


def aligned_dir(cfg: FERPlusModelConfig) -> Path:
    return Path(cfg.out_dir) / "aligned"


def split_root(root: Path) -> Path:
    """The folder holding the split folders: ``root`` or its ``data/``."""
    return root / "data" if any((root / "data" / f).is_dir() for f in SPLIT_FOLDERS) else root


def align(cfg: FERPlusModelConfig) -> None:
    """Step 1: every split through the service's detector and aligner (resumable)."""
    align_photos(split_root(Path(cfg.ferplus)), aligned_dir(cfg), cfg.image_size, cfg.pad_px, cfg.upscale, cfg.threads)


def ferplus(
    cfg: FERPlusModelConfig, split: str, augment: bool, aligned: bool = True, votes: str | None = None
) -> FERPlus:
    """One FERPlus split: the aligned faces (``aligned``) or the original 48 px crops."""
    transform = FaceTransform(image_size=cfg.image_size, augment=augment)
    return FERPlus(
        cfg.ferplus, split, transform, votes=votes or cfg.votes, images=str(aligned_dir(cfg)) if aligned else ""
    )


def ferplus_spec(cfg: FERPlusModelConfig) -> DataSpec:
    return DataSpec.of("ferplus", cfg.ferplus, votes=cfg.votes, images=str(aligned_dir(cfg)))


def rendered_spec(cfg: FERPlusModelConfig) -> DataSpec:
    """The rendered faces trained on (``train``) and scored on (``test``: held-out identities)."""
    return DataSpec.of(
        "rendered", "", seed=cfg.seed, size=cfg.image_size, n=cfg.rendered_train, test_n=cfg.rendered_test
    )


def rendered_faces(cfg: FERPlusModelConfig, split: str) -> InMemoryFaces:
    return render_split(rendered_spec(cfg), split, cfg.image_size, cfg.render_workers or os.cpu_count() or 1)


class _Images(torch.utils.data.Dataset):
    """Several labelled sets as one, for MAE pre-training (items: the dataset contract)."""

    def __init__(self, *parts: FERPlus) -> None:
        self.parts = parts
        self.labels = list(parts[0].labels)
        self.targets = [t for p in parts for t in p.targets]
        self.soft_labels = torch.cat([p.soft_labels for p in parts])
        self._offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.parts[k][index - int(self._offsets[k])]


def common_run_settings(cfg: FERPlusModelConfig) -> dict[str, Any]:
    return dict(
        model="micro",
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        threads=cfg.threads,
        progress=False,
        data=str(ferplus_spec(cfg)),
    )


def train_config(
    cfg: FERPlusModelConfig, out: Path, resume: str, separation: bool, init: Path, refine: bool = False
) -> TrainConfig:
    """The PF-ViT stage's settings (``refine``: its warm restart from ``init``, a finished PF-ViT
    stage); the ablation differs in ``separation`` alone."""
    weights = LossWeights(cls=cfg.cls_weight, poker_sup=cfg.poker_sup_weight, cyc_neutral=cfg.cyc_neutral_weight)
    epochs = cfg.refine_epochs if refine else cfg.train_epochs
    return TrainConfig(
        out_dir=str(out),
        init=str(init),
        epochs=epochs,
        warmup_epochs=min(1.0, epochs / 4),
        blr=cfg.refine_blr if refine else cfg.train_blr,
        d_blr=cfg.d_blr,
        weights=weights,
        grad_clip=cfg.grad_clip,
        label_smoothing=cfg.label_smoothing,
        poker_sup_loss=cfg.poker_sup_loss,
        arch="poker_mode=edit",
        eval_every=max(1, epochs // 6),
        separation=separation,
        resume=resume,
        **common_run_settings(cfg),
    )


@torch.no_grad()
def checkpoint_logits(checkpoint: str | Path, faces: FERPlus, mirror_average: bool, batch: int = 256) -> np.ndarray:
    """``(N, K)`` logits of a checkpoint's E, S_e and H on ``faces`` (no augmentation), averaged
    with the mirror image when the exported graph does so."""
    model, _ = model_from_checkpoint(checkpoint)
    model.eval()
    out = []
    for start in range(0, len(faces), batch):
        x = torch.stack([faces[i]["image"] for i in range(start, min(len(faces), start + batch))])
        views = [x, x.flip(-1)] if mirror_average else [x]
        logits = []
        for v in views:
            z_e, _ = model.separate(model.forward_features(model.normalise(v)))
            logits.append(model.forward_head(z_e)[0])
        out.append(torch.stack(logits).mean(0))
    return torch.cat(out).numpy()


def balanced_scores(logits: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(accuracy, macro recall) of ``logits.argmax`` against ``y``."""
    pred = logits.argmax(1)
    recalls = [float((pred[y == k] == k).mean()) for k in range(num_classes) if (y == k).any()]
    return float((pred == y).mean()), float(np.mean(recalls))


def choose_tau(
    logits: np.ndarray, y: np.ndarray, log_prior: np.ndarray, taus: list[float]
) -> tuple[float, list[dict[str, float]]]:
    """The tau of ``logits - tau * log_prior`` with the best mean of accuracy and macro recall on
    ``y`` (ties: the smaller tau), and every candidate's scores."""
    table = []
    for tau in taus:
        acc, macro = balanced_scores(logits - tau * log_prior, y, logits.shape[1])
        table.append({"tau": tau, "accuracy": acc, "macro_recall": macro})
    best = max(table, key=lambda r: (round(0.5 * (r["accuracy"] + r["macro_recall"]), 6), -r["tau"]))
    return float(best["tau"]), table


def calibrate(cfg: FERPlusModelConfig, train: FERPlus, val: FERPlus) -> dict[str, Any]:
    """Step 5: the logit adjustment, chosen on validation and folded into the head's bias of a
    copy of the editor checkpoint (``calibrated.pt``)."""
    out = Path(cfg.out_dir)
    source = out / "editor" / "last.pt"
    record_path = out / "calibration.json"
    if record_path.is_file() and (out / "calibrated.pt").is_file():
        return json.loads(record_path.read_text())
    prior = train.soft_labels.mean(0).numpy().astype(np.float64)  # the vote mass of each class
    log_prior = np.log(np.clip(prior, 1e-6, None))
    logits = checkpoint_logits(source, val, cfg.mirror_average)
    taus = [float(t) for t in cfg.logit_adjust_taus.split(",") if t.strip()]
    tau, table = choose_tau(logits, np.asarray(val.targets), log_prior, taus)
    payload = load_checkpoint(source)
    bias = payload["model"]["head.fc.bias"]
    payload["model"]["head.fc.bias"] = bias - torch.as_tensor(tau * log_prior, dtype=bias.dtype)
    torch.save(payload, out / "calibrated.pt")
    record = {"tau": tau, "prior": prior.tolist(), "validation": table}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run(cfg: FERPlusModelConfig) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    align(cfg)
    timings["align_s"] = stage_seconds(aligned_dir(cfg), time.perf_counter() - t0)
    train_set = ferplus(cfg, "train", augment=True)
    val_aug = ferplus(cfg, "val", augment=True)
    val_set = ferplus(cfg, "val", augment=False)
    print(f"FERPlus ({cfg.votes} votes): train {len(train_set)}, validation {len(val_set)}", flush=True)

    t0 = time.perf_counter()
    rendered = rendered_faces(cfg, "train")
    timings["render_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    resume, finished = resume_or_skip(out / "pretrain", cfg.pretrain_epochs)
    if not finished:
        run_pretrain(
            PretrainConfig(
                out_dir=str(out / "pretrain"),
                arch=f"image_size={cfg.image_size},stem={cfg.stem},greyscale=true",
                epochs=cfg.pretrain_epochs,
                warmup_epochs=min(1.0, cfg.pretrain_epochs / 4),
                blr=cfg.pretrain_blr,
                mask_ratio=cfg.mask_ratio,
                resume=resume,
                **common_run_settings(cfg),
            ),
            JointFaces(_Images(train_set, val_aug), rendered, greyscale=True, rendered_labels=False),
        )
    timings["pretrain_s"] = stage_seconds(out / "pretrain", time.perf_counter() - t0)
    print(f"pre-training: {timings['pretrain_s']:.0f} s", flush=True)

    joint = JointFaces(train_set, rendered, greyscale=True, rendered_labels=False)
    timings.update(pfvit_stages(cfg, joint, val_set, separation=True))
    print(f"PF-ViT stage: {timings['train_s']:.0f} s, warm restart {timings['refine_s']:.0f} s", flush=True)

    t0 = time.perf_counter()
    resume, finished = resume_or_skip(out / "editor", cfg.editor_epochs)
    if not finished:
        editor_cfg = EditorConfig(
            out_dir=str(out / "editor"),
            init=str(recogniser_checkpoint(cfg, separation=True)),
            epochs=cfg.editor_epochs,
            poker_sup=cfg.editor_poker_sup,
            cyc_neutral=cfg.editor_cyc_neutral,
            sparsity=cfg.editor_sparsity,
            poker_data=str(rendered_spec(cfg)),
            poker_repeat=cfg.editor_rendered_repeat,
            resume=resume,
            **common_run_settings(cfg),
        )
        run_editor(
            editor_cfg,
            JointFaces(
                train_set, rendered, greyscale=True, rendered_repeat=editor_cfg.poker_repeat, rendered_labels=False
            ),
        )
    timings["editor_s"] = stage_seconds(out / "editor", time.perf_counter() - t0)

    t0 = time.perf_counter()
    calibration = calibrate(cfg, train_set, val_set)
    print(f"logit adjustment: tau {calibration['tau']}", flush=True)
    model_dir = Path(cfg.model_dir)
    sample = torch.stack([val_set[i]["image"] for i in range(min(64, len(val_set)))])
    export_checkpoint(
        out / "calibrated.pt",
        model_dir,
        sample,
        name=cfg.name,
        version=cfg.version,
        mirror_average=cfg.mirror_average,
        license="MIT (code, weights and FERPlus labels); FER2013 images: research use, see the card's training.data",
        description=(
            "PF-ViT micro (48 px, convolutional stem of two 3x3 convolutions per stage, greyscale input) trained on "
            "FERPlus (eight classes, vote distributions of ten annotators); poker faces drawn by a "
            "convolutional expression editor. " + DATA_TERMS
        ),
    )
    timings["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    judge = train_judge(
        judge_config(cfg), ferplus(cfg, "train", augment=True), val_set, list(IMAGENET_MEAN), list(IMAGENET_STD)
    )
    save_judge(judge, model_dir / JUDGE_FILE)
    timings["judge_s"] = stage_seconds(out / "judge", time.perf_counter() - t0)

    # The model ships first; the ablation, which only adds a section to the report, follows.
    timings["total_s"] = sum(timings.values())
    metrics = publish(cfg, timings)
    if cfg.ablation:
        ablation = pfvit_stages(cfg, joint, val_set, separation=False)
        timings["ablation_s"] = ablation["train_s"] + ablation["refine_s"]
        # The sum of the stages' recorded times, so a resumed run reports what the whole recipe costs.
        timings["total_s"] = sum(v for k, v in timings.items() if k != "total_s")
        metrics = publish(cfg, timings)
    return metrics


def stage_dirs(cfg: FERPlusModelConfig, separation: bool) -> tuple[Path, Path]:
    """The run folders of the PF-ViT stage and of its warm restart (the ablation's without
    separation)."""
    out = Path(cfg.out_dir)
    return (out / "train", out / "refine") if separation else (out / "ablation", out / "ablation-refine")


def recogniser_checkpoint(cfg: FERPlusModelConfig, separation: bool) -> Path:
    """The checkpoint that ends the recogniser's training: the warm restart's, or the PF-ViT
    stage's when there is none."""
    first, refine = stage_dirs(cfg, separation)
    return (refine if cfg.refine_epochs else first) / "last.pt"


def recogniser_finished(cfg: FERPlusModelConfig, separation: bool) -> bool:
    first, refine = stage_dirs(cfg, separation)
    done = resume_or_skip(first, cfg.train_epochs)[1]
    return done and (not cfg.refine_epochs or resume_or_skip(refine, cfg.refine_epochs)[1])


def pfvit_stages(cfg: FERPlusModelConfig, joint: JointFaces, val_set: FERPlus, separation: bool) -> dict[str, float]:
    """Step 3 (or the ablation's): the PF-ViT stage from the MAE checkpoint, then its warm
    restart from the stage's end; each resumes. Returns their seconds (``train_s``, ``refine_s``)."""
    first, refine = stage_dirs(cfg, separation)
    seconds: dict[str, float] = {}
    for key, run_dir, init, epochs, is_refine in (
        ("train_s", first, Path(cfg.out_dir) / "pretrain" / "last.pt", cfg.train_epochs, False),
        ("refine_s", refine, first / "last.pt", cfg.refine_epochs, True),
    ):
        t0 = time.perf_counter()
        if epochs:
            resume, finished = resume_or_skip(run_dir, epochs)
            if not finished:
                run_train(train_config(cfg, run_dir, resume, separation, init, is_refine), joint, val_set)
        seconds[key] = stage_seconds(run_dir, time.perf_counter() - t0) if epochs else 0.0
    return seconds


def judge_config(cfg: FERPlusModelConfig) -> JudgeConfig:
    return JudgeConfig(
        out_dir=str(Path(cfg.out_dir) / "judge"), epochs=cfg.judge_epochs, batch_size=cfg.batch_size, seed=cfg.seed
    )


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


def main(argv: list[str] | None = None) -> int:
    cfg, top = parse_config(FERPlusModelConfig, "python -m training.ferplus_model", __doc__, argv, extra=recipe_flags)
    if top["quick"]:
        cfg = replace(cfg, **QUICK)
    if not cfg.ferplus:
        raise SystemExit("--ferplus PATH is required (FERPlus labels and FER2013 images; docs/datasets.md)")
    if top["evaluate_only"]:
        timings = previous_timings(cfg.out_dir, cfg.model_dir)
        align(cfg)  # the test faces exactly as the recipe prepared them
        publish(cfg, timings)
    else:
        run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
