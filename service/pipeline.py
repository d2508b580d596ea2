"""The request pipeline: decoded images -> faces -> aligned crops -> one batched inference.

Pure orchestration over the loaded models; no HTTP here. Each stage's wall time is measured
and both returned (for the response) and observed (for Prometheus).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.models import EmotionModel
from service.vision.faces import AlignedFace, find_faces
from service.vision.imaging import resize_rgb
from service.vision.mtcnn import MTCNN


@dataclass(frozen=True)
class DetectOptions:
    max_faces: int
    min_face_size: int
    threshold: float
    aligned: bool = False  # the upload is already an aligned face crop: skip detection


# A found face: box, score, landmarks and the aligned crop (score and landmarks are None for
# uploads that are already aligned crops).
Face = AlignedFace


@dataclass
class ImageResult:
    width: int
    height: int
    faces: list[Face]
    logits: np.ndarray | None = None  # (F, K)
    probabilities: np.ndarray | None = None  # (F, K)
    poker_faces: np.ndarray | None = None  # (F, H, W, 3) uint8 RGB


@dataclass
class StageTimer:
    """Accumulates wall time per stage for one request and reports it to Prometheus."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def observe(self) -> None:
        for name, secs in self.seconds.items():
            metrics.STAGE_LATENCY.labels(stage=name).observe(secs)

    def as_ms(self) -> dict[str, float]:
        return {name: round(secs * 1000.0, 3) for name, secs in self.seconds.items()}


class FacePipeline:
    def __init__(self, detector: MTCNN, model: EmotionModel) -> None:
        self.detector = detector
        self.model = model

    def find_faces(self, image: np.ndarray, options: DetectOptions, timer: StageTimer) -> list[Face]:
        """Detect (or take the aligned upload as) faces and align each to the model's input size."""
        h, w = image.shape[:2]
        size_h, size_w = self.model.input_hw
        if options.aligned:
            with timer.stage("align"):
                crop = resize_rgb(image, (size_w, size_h))
            return [Face(box=(0.0, 0.0, float(w), float(h)), score=None, landmarks=None, aligned=crop)]
        return find_faces(
            self.detector,
            image,
            size=size_h,  # square input, checked at load
            min_face_size=options.min_face_size,
            threshold=options.threshold,
            max_faces=options.max_faces,
            stage=timer.stage,
        )

    def run(
        self,
        images: list[np.ndarray],
        options: DetectOptions,
        timer: StageTimer,
        *,
        recognise: bool,
        poker_face: bool,
    ) -> list[ImageResult]:
        """Analyse every image; all faces of the request go through each graph in one batch."""
        results: list[ImageResult] = []
        for image in images:
            faces = self.find_faces(image, options, timer)
            metrics.FACES_PER_IMAGE.observe(len(faces))
            results.append(ImageResult(width=int(image.shape[1]), height=int(image.shape[0]), faces=faces))
        all_faces = [f.aligned for r in results for f in r.faces]
        if not all_faces:
            return results
        batch = np.stack(all_faces)  # (F, H, W, 3) uint8
        offsets = np.cumsum([0] + [len(r.faces) for r in results])
        if recognise:
            with timer.stage("infer"):
                out = self.model.recognise(batch)
            for r, a, b in zip(results, offsets[:-1], offsets[1:]):
                r.logits, r.probabilities = out.logits[a:b], out.probabilities[a:b]
        if poker_face:
            with timer.stage("generate"):
                pokers = self.model.poker_faces(batch)
            for r, a, b in zip(results, offsets[:-1], offsets[1:]):
                r.poker_faces = pokers[a:b]
        return results

