"""Detect -> filter -> align: the one path from a picture to the model's face crops.

The service runs it on every request and ``pfvit-align-dataset`` runs it over training
photos, so a model is trained on faces prepared exactly as the ones it will be served.
Pure orchestration over a detector; no HTTP, no metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.vision.align import align_face, estimate_similarity, template_landmarks, warp_affine
from service.vision.imaging import Picture
from service.vision.mtcnn import PNET_CELL, FaceDetection


class Detector(Protocol):
    """What :func:`find_faces` needs: ``service.vision.mtcnn.MTCNN`` or a test double."""

    def detect(
        self, image: np.ndarray, *, min_face_size: int | None = None, threshold: float | None = None
    ) -> Sequence[FaceDetection]: ...

    def refine(self, image: np.ndarray, box: Sequence[float]) -> FaceDetection | None:
        """The final stage alone on one box of a full-resolution photo (``MTCNN.refine``)."""
        ...


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


def keep_detections(detections: Sequence[FaceDetection], min_face_size: float, max_faces: int) -> list[FaceDetection]:
    """The detections a caller gets: at least ``min_face_size`` px on their longer side, the
    ``max_faces`` best by score.

    MTCNN's ``min_face_size`` only sets the first pyramid scale, so smaller faces can still
    come back; the API promises a floor, so it applies to the boxes too.
    """
    kept = [d for d in detections if max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= min_face_size]
    kept.sort(key=lambda d: -float(d.score))  # the detector's order already; made explicit
    return kept[:max_faces]


def search_min_face(min_face_size: int, scale: float) -> float:
    """The face side, in a reduced picture's pixels, that the detector searches down to.

    ``min_face_size`` is in full-resolution pixels. On a picture reduced by ``scale`` it maps
    to ``min_face_size * scale``, but never below ``min(min_face_size, 12)``: P-Net's cell is
    12 px, and looking for smaller faces means upsampling the picture, so a photo reduced to
    the detector's bound is never searched at more than its bound times 12 / min_face_size.
    In full-resolution pixels the smallest face found is therefore
    ``max(min_face_size, min(min_face_size, 12) / scale)``.
    """
    return max(min_face_size * scale, float(min(min_face_size, PNET_CELL)))


def find_faces(
    detector: Detector,
    image: np.ndarray | Picture,
    *,
    size: int,
    min_face_size: int,
    threshold: float | None,
    max_faces: int,
    stage: Callable[[str], AbstractContextManager[None]] = _no_stage,
) -> list[AlignedFace]:
    """Detect the faces of one photo and align each to ``size`` px.

    Args:
        detector: the face detector.
        image: ``(H, W, 3) uint8`` RGB pixels, or a :class:`Picture` whose ``pixels`` may be
            a reduced copy (the detector then searches those, see :func:`search_min_face`).
        size: side of the square aligned crop (the model's input size).
        min_face_size: smallest face side searched for and kept, full-resolution pixels.
        threshold: final detection score threshold (None: the detector's own).
        max_faces: keep at most this many faces, highest scores first.
        stage: ``stage(name)`` context manager timing the "detect" and "align" steps ("align"
            includes decoding a reduced picture's full resolution when a crop needs it).

    Returns:
        Faces by descending score (possibly none), boxes and landmarks in full-resolution pixels.
    """
    picture = image if isinstance(image, Picture) else Picture.from_array(image)
    scale = min(picture.scale)
    search = search_min_face(min_face_size, scale)
    with stage("detect"):
        detections = detector.detect(picture.pixels, min_face_size=math.ceil(search), threshold=threshold)
    detections = keep_detections(detections, search, max_faces)
    faces: list[AlignedFace] = []
    with stage("align"):
        for det in detections:
            landmarks = np.asarray(det.landmarks, dtype=np.float64).reshape(5, 2)
            corners = picture.to_full(np.asarray(det.box, dtype=np.float64).reshape(2, 2))
            full_landmarks = picture.to_full(landmarks)
            crop, box, full_landmarks = _align(detector, picture, landmarks, full_landmarks, corners.ravel(), size)
            faces.append(
                AlignedFace(
                    box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    score=float(det.score),
                    landmarks=full_landmarks,
                    aligned=crop,
                )
            )
    return faces


def _align(
    detector: Detector,
    picture: Picture,
    landmarks: np.ndarray,
    full_landmarks: np.ndarray,
    full_box: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The aligned crop, and the box and landmarks it was cut at (full-resolution pixels).

    Cut from the detection pixels, or from full resolution where that changes the crop: when
    the crop would enlarge the face of the reduced picture, the full-resolution photo has
    detail that the reduced one lost, and box and landmarks are refined there too (O-Net again,
    on the full-resolution face) so they are as precise as a search of the full photo. Otherwise
    the reduced picture is the better source: an area-averaged reduction, where a bilinear
    warp from full resolution would alias.
    """
    matrix = estimate_similarity(landmarks, template_landmarks(size))
    enlarges = float(np.hypot(matrix[0, 0], matrix[1, 0])) > 1.0
    if picture.reduced and enlarges:
        full = picture.full()
        refined = detector.refine(full, full_box.tolist())
        if refined is not None:
            full_box = np.asarray(refined.box, dtype=np.float64)
            full_landmarks = np.asarray(refined.landmarks, dtype=np.float64).reshape(5, 2)
        return align_face(full, full_landmarks, size)[0], full_box, full_landmarks
    return warp_affine(picture.pixels, matrix, (size, size)), full_box, full_landmarks
