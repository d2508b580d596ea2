"""Score an exported emotion model the way users meet it: through the service's own code.

Everything here runs the model folder's ONNX files with ``service.models.EmotionModel`` and
finds faces with ``service.pipeline.FacePipeline`` (MTCNN, the size floor, 5-point alignment),
so the figures are those of ``POST /v1/recognize`` and ``POST /v1/poker-face`` minus HTTP.

- ``recognise_photos``: each face crop is put inside a picture the way a photo of it would be
  sent (edge-padded, upscaled: ``training.data.align_dataset.prepare``), detection on; an image
  where no face is found counts as wrong.
- ``recognise_crops``: the crops sent with ``aligned=true`` (the service only resizes them).
- ``poker_face_measures``: how much the poker faces change real faces (mean absolute change,
  SSIM), and what the independent judge (``training.judge``) reads in them.
- ``poker_face_realism``: a classifier two-sample test (``training.realism``) of the poker
  faces of expressive faces against real neutral faces, with the inputs themselves as baseline.
- ``rendered_fidelity``: on rendered test identities, whose true poker face is known, the PSNR
  of the generated poker face against it minus the PSNR of the unchanged input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.models import EmotionModel
from service.pipeline import DetectOptions, FacePipeline, StageTimer
from service.runtime import CPU
from service.vision.expression_map import SIGMA_FRACTION, expression_map, mass_inside, true_expression_region
from service.vision.imaging import resize_rgb
from service.vision.mtcnn import MTCNN
from training.data.align_dataset import prepare
from training.evaluate import classification_metrics, confusion_matrix
from training.fidelity import psnr, ssim
from training.plots import image_grid_png
from training.realism import C2STConfig, c2st

NOT_FOUND = -1  # prediction of an image where the service found no face


@dataclass(frozen=True)
class PhotoPredictions:
    predictions: np.ndarray  # (N,) class index, NOT_FOUND where no face was detected
    aligned: np.ndarray  # (N, S, S, 3) uint8: the face the model saw (zeros where none)
    detected: np.ndarray  # (N,) bool


def load_emotion_model(model_dir: str | Path, threads: int = 0) -> EmotionModel:
    return EmotionModel.from_dir(model_dir, providers=[CPU], intra_op_threads=threads)


def recognise_photos(
    model: EmotionModel,
    mtcnn_dir: str | Path,
    crops: Sequence[np.ndarray],
    pad_px: int,
    upscale: float,
    batch: int = 256,
    threads: int = 0,
) -> PhotoPredictions:
    """Predict each ``(h, w, 3) uint8`` crop after putting it inside a picture, detection on,
    with the service's default detection options; the largest-score face of each picture counts."""
    settings = Settings(_env_file=None)
    options = DetectOptions(
        max_faces=1, min_face_size=settings.default_min_face_size, threshold=settings.default_detection_threshold
    )
    pipeline = FacePipeline(MTCNN.from_dir(mtcnn_dir, intra_op_threads=threads), model)
    size = model.input_hw[0]
    aligned = np.zeros((len(crops), size, size, 3), np.uint8)
    detected = np.zeros(len(crops), bool)
    for i, crop in enumerate(crops):
        faces = pipeline.find_faces(prepare(np.asarray(crop), pad_px, upscale), options, StageTimer())
        if faces:
            aligned[i], detected[i] = faces[0].aligned, True
    predictions = np.full(len(crops), NOT_FOUND, np.int64)
    found = np.flatnonzero(detected)
    for start in range(0, len(found), batch):
        idx = found[start : start + batch]
        predictions[idx] = model.recognise(aligned[idx]).logits.argmax(axis=1)
    return PhotoPredictions(predictions=predictions, aligned=aligned, detected=detected)


def recognise_crops(model: EmotionModel, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """Class indices for crops uploaded with ``aligned=true`` (resized to the input, no detection)."""
    resized = served_crops(model, crops)
    return np.concatenate(
        [model.recognise(resized[i : i + batch]).logits.argmax(axis=1) for i in range(0, len(resized), batch)]
    )


def score(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class accuracy and the confusion matrix; NOT_FOUND counts as
    wrong (it is a miss of the true class, and in no column of the matrix)."""
    found = y_pred != NOT_FOUND
    matrix = confusion_matrix(y_true[found], y_pred[found], len(labels))
    metrics = classification_metrics(matrix, labels, support=np.bincount(y_true, minlength=len(labels)))
    metrics.update(detected=int(found.sum()), confusion_matrix=matrix.tolist())
    return metrics


def poker_faces(model: EmotionModel, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """``(N, S, S, 3) uint8`` poker faces of aligned faces, from the model's poker-face graph."""
    return np.concatenate([model.poker_faces(faces[i : i + batch]) for i in range(0, len(faces), batch)])


def served_crops(model: EmotionModel, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Crops as the service takes them with ``aligned=true``: resized to the model's input."""
    h, w = model.input_hw
    return np.stack([resize_rgb(np.asarray(c), (w, h)) for c in crops])


def realism_samples(y: np.ndarray, neutral_index: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(neutral, expressive)`` indices: ``n`` faces of each, drawn without replacement (seeded)
    from the faces whose class is neutral and from all the others."""
    neutral, expressive = np.flatnonzero(y == neutral_index), np.flatnonzero(y != neutral_index)
    if min(len(neutral), len(expressive)) < n:
        raise ValueError(f"{n} faces a side asked for: only {len(neutral)} neutral and {len(expressive)} others")
    rng = np.random.default_rng(seed)
    return rng.choice(neutral, n, replace=False), rng.choice(expressive, n, replace=False)


def poker_face_realism(
    model: EmotionModel, neutral: np.ndarray, expressive: np.ndarray, cfg: C2STConfig, inputs: bool = True
) -> dict[str, Any]:
    """C2ST ROC AUC (``training.realism``) of the poker faces of the ``expressive`` crops against
    the real ``neutral`` crops, both ``(N, S, S, 3) uint8`` at the model's input size; with
    ``inputs``, also of the expressive crops themselves (the baseline)."""
    out: dict[str, Any] = {"n": len(neutral), "folds": cfg.folds, "seed": cfg.seed}
    if inputs:
        out["inputs"] = c2st(expressive, neutral, cfg).as_dict()
    out["poker_faces"] = c2st(poker_faces(model, expressive), neutral, cfg).as_dict()
    return out


def change_measures(faces: np.ndarray, pokers: np.ndarray) -> dict[str, float]:
    """Mean absolute change (grey levels, 0-255) and mean SSIM of the poker faces to the inputs."""
    return {
        "mean_abs_change": float(np.abs(pokers.astype(np.int16) - faces).mean()),
        "ssim_to_input": float(ssim(pokers, faces).mean()),
    }


def map_masses(faces: np.ndarray, truth: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mass [N], region share [N])``: the share of the expression map of each generated poker
    face that lies on the true expression region (NaN for an empty map), and the share of the
    face that region covers. All ``(N, S, S, 3) uint8``; docs/expression-maps.md."""
    sigma = SIGMA_FRACTION * faces.shape[1]
    masses, regions = [], []
    for face, true_poker, made in zip(faces, truth, generated):
        region = true_expression_region(face, true_poker, sigma)
        heat = expression_map(face, made)
        masses.append(mass_inside(heat, region) if heat.any() else float("nan"))
        regions.append(float(region.mean()))
    return np.asarray(masses, np.float64), np.asarray(regions, np.float64)


def rendered_fidelity(
    model: EmotionModel, faces: np.ndarray, truth: np.ndarray, expressive: np.ndarray
) -> dict[str, float]:
    """PSNR of the generated poker faces against the true ones, and that of the unchanged input,
    on the expressive faces (a neutral face is its own poker face); and where their expression
    maps put their mass (docs/expression-maps.md)."""
    generated = poker_faces(model, faces)
    p_model = psnr(generated[expressive], truth[expressive])
    p_base = psnr(faces[expressive], truth[expressive])
    masses, regions = map_masses(faces[expressive], truth[expressive], generated[expressive])
    shown = masses[np.isfinite(masses)]
    return {
        "psnr_db": float(p_model.mean()),
        "baseline_psnr_db": float(p_base.mean()),
        "psnr_gain_db": float(p_model.mean() - p_base.mean()),
        "ssim": float(ssim(generated[expressive], truth[expressive]).mean()),
        "baseline_ssim": float(ssim(faces[expressive], truth[expressive]).mean()),
        # Expression maps (service.vision.expression_map) of the generated poker faces: the
        # share of each non-empty map's mass on the true expression region, and how many are empty.
        "map_mass_mean": float(shown.mean()) if len(shown) else 0.0,
        "map_mass_median": float(np.median(shown)) if len(shown) else 0.0,
        "map_empty": int(len(masses) - len(shown)),
        "map_region_share": float(np.mean(regions)),
        "num_samples": int(expressive.sum()),
    }


def difference_grid(
    faces: np.ndarray,
    pokers: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    path: str | Path,
    per_class: int = 3,
    gain: float = 4.0,
) -> Path:
    """PNG with ``per_class`` rows per class in label order; columns input | poker face |
    |difference| x ``gain``. The first faces of each class in order are shown, not chosen ones."""
    rows = np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(num_classes)])
    diff = np.clip(np.abs(pokers[rows].astype(np.int16) - faces[rows]) * gain, 0, 255).astype(np.uint8)

    def column(images: np.ndarray) -> np.ndarray:  # [B, H, W, 3] uint8 -> [B, 3, H, W] float in [0, 1]
        return images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    return image_grid_png(
        [("input", column(faces[rows])), ("poker", column(pokers[rows])), (f"diff x{gain:g}", column(diff))], path
    )
