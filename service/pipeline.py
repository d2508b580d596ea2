"""The request pipeline: image bytes -> faces -> aligned crops -> one batched inference.

Pure orchestration over the loaded models; no HTTP here. Each stage's wall time is measured
and both returned (for the response) and observed (for Prometheus).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.errors import NotSquareCrop, PFViTError
from service.models import EmotionModel
from service.vision.faces import AlignedFace, Detector, find_faces
from service.vision.imaging import Picture, decode_picture, resize_rgb


@dataclass(frozen=True)
class DetectOptions:
    max_faces: int
    min_face_size: int
    threshold: float
    aligned: bool = False  # the upload is already an aligned face crop: skip detection


# A found face: box, score, landmarks and the aligned crop (score and landmarks are None for
# uploads that are already aligned crops).
Face = AlignedFace


@dataclass(frozen=True)
class ImageResult:
    """One image's answer, complete when constructed: the graphs' outputs are None only when
    that graph was not asked for."""

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
    """Detection, alignment and the emotion graphs for whole requests.

    Args:
        detector, model: the loaded models.
        max_image_pixels: the per-image pixel limit checked before decoding uploaded bytes.
        detect_max_side: the longest side fed to the detector (None: no bound); longer photos
            are reduced first, JPEGs while decoding (``service.vision.imaging.decode_picture``).
    """

    def __init__(
        self,
        detector: Detector,
        model: EmotionModel,
        *,
        max_image_pixels: int = 40_000_000,
        detect_max_side: int | None = None,
    ) -> None:
        self.detector = detector
        self.model = model
        self.max_image_pixels = max_image_pixels
        self.detect_max_side = detect_max_side or None

    def find_faces(self, image: np.ndarray | Picture, options: DetectOptions, timer: StageTimer) -> list[Face]:
        """Detect (or take the aligned upload as) faces and align each to the model's input size."""
        size_h, size_w = self.model.input_hw
        if options.aligned:
            pixels = image.full() if isinstance(image, Picture) else image
            h, w = pixels.shape[:2]
            with timer.stage("align"):
                crop = resize_rgb(pixels, (size_w, size_h))
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

    def picture(self, image: bytes | np.ndarray, options: DetectOptions) -> Picture:
        """Decode uploaded bytes (or wrap decoded pixels) at the size detection needs.

        Raises:
            NotSquareCrop: ``options.aligned`` and the image is not square (stretching it to
                the model's square input would distort the face).
        """
        max_side = None if options.aligned else self.detect_max_side
        if isinstance(image, np.ndarray):
            picture = Picture.from_array(image, max_side=max_side)
        else:
            picture = decode_picture(image, max_pixels=self.max_image_pixels, max_side=max_side)
        if options.aligned and picture.width != picture.height:
            raise NotSquareCrop(
                f"aligned=true takes a square aligned face crop; this image is {picture.width}x{picture.height}. "
                "Crop it square, or send it without aligned=true to have its faces found"
            )
        return picture

    def run(
        self,
        images: Sequence[bytes | np.ndarray],
        options: DetectOptions,
        timer: StageTimer,
        *,
        recognise: bool,
        poker_face: bool,
        names: Sequence[str | None] | None = None,
    ) -> list[ImageResult]:
        """Analyse every image; all faces of the request go through each graph in one batch.

        Images are decoded, searched and released one at a time, so a request holds one photo's
        pixels at once (plus the small aligned crops). A decoding error names the image by its
        index and ``names`` entry.
        """
        with self.model.request(recognise=recognise, poker_face=poker_face):
            found = self._find_all(images, options, timer, names)
            return self._infer(found, timer, recognise=recognise, poker_face=poker_face)

    def _find_all(
        self,
        images: Sequence[bytes | np.ndarray],
        options: DetectOptions,
        timer: StageTimer,
        names: Sequence[str | None] | None,
    ) -> list[tuple[int, int, list[Face]]]:
        """Width, height and faces of every image, decoding and releasing one at a time."""
        found: list[tuple[int, int, list[Face]]] = []  # width, height, faces per image
        for index, image in enumerate(images):
            with timer.stage("decode"):
                try:
                    picture = self.picture(image, options)
                except PFViTError as exc:
                    # Name the culprit: with several uploads the client must know which one.
                    name = names[index] if names is not None else None
                    exc.extra.setdefault("image_index", index)
                    exc.extra.setdefault("image_detail", exc.detail)
                    exc.detail = f"image {index} ({name or 'unnamed'}): {exc.detail}"
                    raise
            faces = self.find_faces(picture, options, timer)
            metrics.FACES_PER_IMAGE.observe(len(faces))
            found.append((picture.width, picture.height, faces))
            del picture  # release the pixels before the next photo is decoded
        return found

    def _infer(
        self, found: list[tuple[int, int, list[Face]]], timer: StageTimer, *, recognise: bool, poker_face: bool
    ) -> list[ImageResult]:
        """All faces of the request through each graph asked for, in one batch."""
        crops = [f.aligned for _, _, faces in found for f in faces]
        batch = np.stack(crops) if crops else np.zeros((0, *self.model.input_hw, 3), np.uint8)  # (F, H, W, 3)
        # Timed only when there is work: a request without faces has no infer or generate stage.
        stage = timer.stage if crops else (lambda _name: nullcontext())
        out = pokers = None
        if recognise:
            with stage("infer"):
                out = self.model.recognise(batch)
        if poker_face:
            with stage("generate"):
                pokers = self.model.poker_faces(batch)
        results: list[ImageResult] = []
        start = 0
        for width, height, faces in found:
            rows = slice(start, start + len(faces))
            start += len(faces)
            results.append(
                ImageResult(
                    width=width,
                    height=height,
                    faces=faces,
                    logits=None if out is None else out.logits[rows],
                    probabilities=None if out is None else out.probabilities[rows],
                    poker_faces=None if pokers is None else pokers[rows],
                )
            )
        return results
