"""The FERPlus recipe's settings (:class:`FERPlusModelConfig`) and where its data and stages
live: what the recipe (:mod:`training.ferplus_model`), its evaluation
(:mod:`training.ferplus_eval`) and the probes share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.config import EditorConfig
from training.data.ferplus import FERPlus
from training.data.spec import DataSpec
from training.data.transforms import FaceTransform
from training.default_model import InMemoryFaces, render_split
from training.judge import JudgeConfig
from training.recipe import align_photos, resume_or_skip

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
        tta_shift_px: the recognition graph also averages views shifted by this many pixels
            (``training.export.RecognitionGraph``; 0: none).
        logit_adjust_taus: the grid tau is chosen from on the validation faces.
        accuracy_floor, macro_recall_floor: what the service must reach on both; tau is the one
            that clears both on validation by the largest common margin (the best mean of the two
            when none does; ``training.calibration.choose_tau``).
        ablation: also train the separation ablation (step 7).
        editor_*: the editor stage's settings of the same names (:class:`EditorConfig`); its
            critic (``editor_adv`` above 0) learns from FERPlus train faces whose majority is
            neutral.
        editor_photo_augment: the editor stage's photographs get every training augmentation
            ("full") or the random affine and flip alone ("geometry": what its critic learns
            real faces from should look like the faces it is scored on).
        realism_n: faces a side of the two-sample test of poker faces against real neutral
            test faces (``served_eval.poker_face_realism``); 0 = not run.
    """

    ferplus: str = ""
    votes: Literal["label", "new"] = "label"
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
    poker_sup_loss: Literal["l1", "l2"] = "l1"
    cyc_neutral_weight: float = 0.5
    label_smoothing: float = 0.05
    # Rendered faces beside FERPlus's 25,045 train photos: about one sample in eleven.
    rendered_train: int = 2400
    rendered_test: int = 800
    mirror_average: bool = True
    tta_shift_px: int = 1
    # 0 to 1.5 in steps of 0.05: accuracy falls steeply in part of that range (docs/pfvit.md).
    logit_adjust_taus: str = ",".join(f"{k / 20:g}" for k in range(31))
    accuracy_floor: float = 0.80
    macro_recall_floor: float = 0.60
    ablation: bool = True
    editor_epochs: int = EditorConfig.epochs
    editor_rendered_repeat: int = 3
    editor_poker_sup: float = EditorConfig.poker_sup
    editor_cyc_neutral: float = EditorConfig.cyc_neutral
    editor_sparsity: float = EditorConfig.sparsity
    editor_adv: float = EditorConfig.adv
    editor_identity: float = EditorConfig.identity
    editor_gan: Literal["hinge", "nonsat"] = EditorConfig.gan
    editor_r1_gamma: float = EditorConfig.r1_gamma
    editor_d_steps: int = EditorConfig.d_steps
    editor_d_blr: float = EditorConfig.d_blr
    editor_poker_translate: float = EditorConfig.poker_translate
    editor_poker_scale: tuple[float, float] = EditorConfig.poker_scale
    editor_d_pool: bool = EditorConfig.d_pool
    editor_d_arch: Literal["patch", "face"] = EditorConfig.d_arch
    editor_d_width: int = EditorConfig.d_width
    editor_photo_augment: Literal["full", "geometry"] = "full"
    realism_n: int = 700
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
    realism_n=0,
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
    cfg: FERPlusModelConfig,
    split: str,
    augment: bool,
    aligned: bool = True,
    votes: Literal["label", "new"] | None = None,
    augment_kind: Literal["full", "geometry"] = "full",
) -> FERPlus:
    """One FERPlus split: the aligned faces (``aligned``) or the original 48 px crops; with
    ``augment``, all the training augmentations or (``augment_kind="geometry"``) the random
    affine and flip alone."""
    transform = FaceTransform(image_size=cfg.image_size, augment=augment)
    transform = transform.geometry_only() if augment_kind == "geometry" else transform
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


def judge_config(cfg: FERPlusModelConfig) -> JudgeConfig:
    return JudgeConfig(
        out_dir=str(Path(cfg.out_dir) / "judge"), epochs=cfg.judge_epochs, batch_size=cfg.batch_size, seed=cfg.seed
    )
