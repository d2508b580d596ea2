"""Detect -> filter -> align: the one path from a picture to the model's face crops.

The service runs it on every request and ``pfvit-align-dataset`` runs it over training
photos, so a model is trained on faces prepared exactly as the ones it will be served.
Pure orchestration over a detector; no HTTP, no metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.vision.align import align_face


class Detector(Protocol):
    """What :func:`find_faces` needs: ``service.vision.mtcnn.MTCNN`` or a test double."""

    def detect(self, image: np.ndarray, *, min_face_size: int | None = None, threshold: float | None = None) -> Sequence: ...


@dataclass(frozen=True)
class AlignedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels
    score: float | None  # detection score; None for an upload that is already an aligned crop
    landmarks: np.ndarray | None  # (5, 2) float64 (x, y) in the image's pixels; None likewise
    aligned: np.ndarray  # (size, size, 3) uint8 RGB on the 5-point template

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _no_stage(_name: str) -> AbstractContextManager[None]:
    return nullcontext()


def keep_detections(detections: Sequence, min_face_size: int, max_faces: int) -> list:
    """The detections a caller gets: at least ``min_face_size`` px on their longer side, the
    ``max_faces`` best by score.

    MTCNN's ``min_face_size`` only sets the first pyramid scale, so smaller faces can still
    come back; the API promises a floor, so it applies to the boxes too.
    """
    kept = [d for d in detections if max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= min_face_size]
    kept.sort(key=lambda d: -float(d.score))  # the detector's order already; made explicit
    return kept[:max_faces]


def find_faces(
    detector: Detector,
    image: np.ndarray,
    *,
    size: int,
    min_face_size: int,
    threshold: float | None,
    max_faces: int,
    stage: Callable[[str], AbstractContextManager[None]] = _no_stage,
) -> list[AlignedFace]:
    """Detect the faces of one ``(H, W, 3) uint8`` RGB image and align each to ``size`` px.

    Args:
        detector: the face detector.
        size: side of the square aligned crop (the model's input size).
        min_face_size: smallest face side searched for and kept, pixels.
        threshold: final detection score threshold (None: the detector's own).
        max_faces: keep at most this many faces, highest scores first.
        stage: ``stage(name)`` context manager timing the "detect" and "align" steps.

    Returns:
        Faces by descending score (possibly none).
    """
    with stage("detect"):
        detections = detector.detect(image, min_face_size=min_face_size, threshold=threshold)
    detections = keep_detections(detections, min_face_size, max_faces)
    faces: list[AlignedFace] = []
    with stage("align"):
        for det in detections:
            landmarks = np.asarray(det.landmarks, dtype=np.float64).reshape(5, 2)
            crop, _ = align_face(image, landmarks, size)
            faces.append(AlignedFace(box=tuple(float(v) for v in det.box), score=float(det.score), landmarks=landmarks, aligned=crop))
    return faces
