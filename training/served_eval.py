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
from service.vision.mtcnn import MTCNN
from training.data.align_dataset import prepare
from training.evaluate import classification_metrics, confusion_matrix
from training.fidelity import psnr, ssim

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
    from service.vision.imaging import resize_rgb

    h, w = model.input_hw
    resized = np.stack([resize_rgb(np.asarray(c), (w, h)) for c in crops])
    return np.concatenate([model.recognise(resized[i : i + batch]).logits.argmax(axis=1) for i in range(0, len(resized), batch)])


def score(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class accuracy and the confusion matrix; NOT_FOUND counts as
    wrong (it is a miss of the true class, and in no column of the matrix)."""
    found = y_pred != NOT_FOUND
    matrix = confusion_matrix(y_true[found], y_pred[found], len(labels))
    metrics = classification_metrics(matrix, labels)
    # Misses are errors: recompute the rates over all samples, not only the detected ones.
    support = np.bincount(y_true, minlength=len(labels))
    correct = np.diag(matrix)
    metrics["accuracy"] = float(correct.sum() / len(y_true)) if len(y_true) else 0.0
    recall = np.divide(correct, support, out=np.zeros(len(labels)), where=support > 0)
    predicted = matrix.sum(axis=0)
    precision = np.divide(correct, predicted, out=np.zeros(len(labels)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(labels)), where=(precision + recall) > 0)
    present = support > 0
    metrics["macro_f1"] = float(f1[present].mean())
    metrics["mean_class_accuracy"] = float(recall[present].mean())
    metrics["per_class_accuracy"] = {n: float(recall[i]) if present[i] else None for i, n in enumerate(labels)}
    metrics["per_class_f1"] = {n: float(f1[i]) if present[i] else None for i, n in enumerate(labels)}
    metrics["support"] = {n: int(support[i]) for i, n in enumerate(labels)}
    metrics["num_samples"] = int(len(y_true))
    metrics["detected"] = int(found.sum())
    metrics["confusion_matrix"] = matrix.tolist()
    return metrics


def poker_faces(model: EmotionModel, faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """``(N, S, S, 3) uint8`` poker faces of aligned faces, from the model's poker-face graph."""
    return np.concatenate([model.poker_faces(faces[i : i + batch]) for i in range(0, len(faces), batch)])


def change_measures(faces: np.ndarray, pokers: np.ndarray) -> dict[str, float]:
    """Mean absolute change (grey levels, 0-255) and mean SSIM of the poker faces to the inputs."""
    return {
        "mean_abs_change": float(np.abs(pokers.astype(np.int16) - faces).mean()),
        "ssim_to_input": float(ssim(pokers, faces).mean()),
    }


def rendered_fidelity(model: EmotionModel, faces: np.ndarray, truth: np.ndarray, expressive: np.ndarray) -> dict[str, float]:
    """PSNR of the generated poker faces against the true ones, and that of the unchanged input,
    on the expressive faces (a neutral face is its own poker face)."""
    generated = poker_faces(model, faces)
    p_model = psnr(generated[expressive], truth[expressive])
    p_base = psnr(faces[expressive], truth[expressive])
    return {
        "psnr_db": float(p_model.mean()),
        "baseline_psnr_db": float(p_base.mean()),
        "psnr_gain_db": float(p_model.mean() - p_base.mean()),
        "ssim": float(ssim(generated[expressive], truth[expressive]).mean()),
        "baseline_ssim": float(ssim(faces[expressive], truth[expressive]).mean()),
        "num_samples": int(expressive.sum()),
    }


def difference_grid(faces: np.ndarray, pokers: np.ndarray, y: np.ndarray, labels: list[str], path: str | Path, per_class: int = 3, gain: float = 4.0) -> Path:
    """PNG, one row per class: (input | poker face | |difference| x gain) for ``per_class`` faces.

    The first faces of each class in order are shown, not chosen ones.
    """
    from PIL import Image

    s = faces.shape[1]
    gap = 4
    triple = 3 * s + 2
    canvas = np.full((len(labels) * (s + gap), per_class * (triple + 3 * gap), 3), 255, np.uint8)
    for row in range(len(labels)):
        for col, i in enumerate(np.flatnonzero(y == row)[:per_class]):
            diff = np.clip(np.abs(pokers[i].astype(np.int16) - faces[i]) * gain, 0, 255).astype(np.uint8)
            x0, y0 = col * (triple + 3 * gap), row * (s + gap)
            for k, img in enumerate((faces[i], pokers[i], diff)):
                canvas[y0 : y0 + s, x0 + k * (s + 1) : x0 + k * (s + 1) + s] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).resize((canvas.shape[1] * 2, canvas.shape[0] * 2), Image.Resampling.NEAREST).save(path, optimize=True)
    return path
