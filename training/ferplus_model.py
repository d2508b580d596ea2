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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.calibration import checkpoint_logits, choose_tau
from training.checkpoint import load_checkpoint
from training.cli import parse_config
from training.config import IMAGENET_MEAN, IMAGENET_STD, EditorConfig, LossWeights, PretrainConfig, TrainConfig
from training.data.ferplus import FERPlus
from training.data.joint import JointFaces
from training.default_model import previous_timings
from training.engine import run_editor, run_pretrain, run_train
from training.export import export_checkpoint
from training.ferplus_config import (
    DATA_TERMS,
    JUDGE_FILE,
    QUICK,
    FERPlusModelConfig,
    align,
    aligned_dir,
    ferplus,
    ferplus_spec,
    judge_config,
    recogniser_checkpoint,
    rendered_faces,
    rendered_spec,
    stage_dirs,
)
from training.ferplus_eval import publish
from training.judge import save_judge, train_judge
from training.recipe import recipe_flags, resume_or_skip, stage_seconds


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


def calibrate(cfg: FERPlusModelConfig, train: FERPlus, val: FERPlus) -> dict[str, Any]:
    """Step 5: the logit adjustment, chosen on validation and folded into the head's bias of a
    copy of the editor checkpoint (``calibrated.pt``). Kept when it is newer than that
    checkpoint; an editor stage run again (the copy would carry the old editor) redoes it."""
    out = Path(cfg.out_dir)
    source = out / "editor" / "last.pt"
    record_path = out / "calibration.json"
    calibrated = out / "calibrated.pt"
    if record_path.is_file() and calibrated.is_file() and calibrated.stat().st_mtime >= source.stat().st_mtime:
        return json.loads(record_path.read_text())
    prior = train.soft_labels.mean(0).numpy().astype(np.float64)  # the vote mass of each class
    log_prior = np.log(np.clip(prior, 1e-6, None))
    logits = checkpoint_logits(source, val, cfg.mirror_average, cfg.tta_shift_px)
    taus = [float(t) for t in cfg.logit_adjust_taus.split(",") if t.strip()]
    floors = (cfg.accuracy_floor, cfg.macro_recall_floor)
    tau, table = choose_tau(logits, np.asarray(val.targets), log_prior, taus, floors)
    payload = load_checkpoint(source)
    bias = payload["model"]["head.fc.bias"]
    payload["model"]["head.fc.bias"] = bias - torch.as_tensor(tau * log_prior, dtype=bias.dtype)
    torch.save(payload, calibrated)
    record = {"tau": tau, "floors": list(floors), "prior": prior.tolist(), "validation": table}
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
            adv=cfg.editor_adv,
            identity=cfg.editor_identity,
            gan=cfg.editor_gan,
            r1_gamma=cfg.editor_r1_gamma,
            d_steps=cfg.editor_d_steps,
            d_blr=cfg.editor_d_blr,
            poker_translate=cfg.editor_poker_translate,
            poker_scale=cfg.editor_poker_scale,
            d_pool=cfg.editor_d_pool,
            d_arch=cfg.editor_d_arch,
            d_width=cfg.editor_d_width,
            poker_data=str(rendered_spec(cfg)),
            poker_repeat=cfg.editor_rendered_repeat,
            resume=resume,
            **common_run_settings(cfg),
        )
        photos = ferplus(cfg, "train", augment=True, augment_kind=cfg.editor_photo_augment)
        run_editor(
            editor_cfg,
            JointFaces(
                photos, rendered, greyscale=True, rendered_repeat=editor_cfg.poker_repeat, rendered_labels=False
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
        shift_px=cfg.tta_shift_px,
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
