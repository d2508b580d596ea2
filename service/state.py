"""The service's life: check the models, load them, warm them up, then report ready.

Checking (cards present, checksums right) happens before the server accepts a connection,
so a missing or tampered model stops start-up with a message that says what is missing.
Creating sessions and warming up happen next, in a worker thread, while ``/healthz``
already answers and ``/readyz`` says 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

from service import metrics
from service.card import ModelCard, load_card, verify_files
from service.config import Settings
from service.errors import ModelLoadError, ModelNotReady
from service.models import EmotionModel
from service.pipeline import FacePipeline
from service.runtime import primary_provider, resolve_providers
from service.vision.mtcnn import MTCNN

log = logging.getLogger(__name__)

_MISSING_EMOTION_MODEL = (
    "no emotion model at {path}: put a trained PF-ViT export there (card.json plus its ONNX files; "
    "see README, 'Models'), or point PFVIT_MODELS_DIR / PFVIT_EMOTION_MODEL at one. "
    "The service never serves untrained weights."
)


class ServiceState:
    """Models, readiness and the concurrency gate of one running service."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers = resolve_providers(settings.providers)
        self.detector_card: ModelCard | None = None
        self.emotion_card: ModelCard | None = None
        self.pipeline: FacePipeline | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self.gate = asyncio.Semaphore(settings.max_concurrent_inference)

    # --- start-up ----------------------------------------------------------------------------

    def preflight(self) -> None:
        """Fail fast: both cards readable and valid, every file present with the right sha256."""
        s = self.settings
        if not (s.emotion_model_dir / "card.json").is_file():
            raise ModelLoadError(_MISSING_EMOTION_MODEL.format(path=s.emotion_model_dir))
        if not (s.detector_model_dir / "card.json").is_file():
            raise ModelLoadError(f"no face-detector model at {s.detector_model_dir} (expected the MTCNN card and ONNX files)")
        self.emotion_card = load_card(s.emotion_model_dir)
        if self.emotion_card.kind != "emotion":
            raise ModelLoadError(f"{s.emotion_model_dir} holds a {self.emotion_card.kind!r} model, not an emotion model")
        verify_files(self.emotion_card, s.emotion_model_dir)
        self.detector_card = load_card(s.detector_model_dir)
        verify_files(self.detector_card, s.detector_model_dir)

    def load(self) -> None:
        """Create sessions, check them against the cards, warm up; then flip ready."""
        s = self.settings
        try:
            detector = MTCNN.from_dir(s.detector_model_dir, providers=self.providers, intra_op_threads=s.intra_op_threads)
            model = EmotionModel.from_dir(
                s.emotion_model_dir,
                providers=self.providers,
                intra_op_threads=s.intra_op_threads,
                max_batch=s.max_inference_batch,
                batch_wait_s=s.batch_max_wait_ms / 1000.0,
            )
            # Warm-up: the detector on a small grey frame, every emotion graph on one face.
            for _ in range(max(1, s.warmup_runs)):
                detector.detect(np.full((160, 160, 3), 127, np.uint8))
            model.warm_up(s.warmup_runs)
        except ModelLoadError as exc:
            self.load_error = exc.detail
            log.error("model loading failed: %s", exc.detail)
            raise
        self.pipeline = FacePipeline(detector, model, max_image_pixels=s.max_image_pixels, detect_max_side=s.detect_max_side)
        for card, provider in ((model.card, model.provider), (self.detector_card, _detector_provider(detector))):
            if card is not None:
                metrics.MODEL_INFO.labels(model=card.name, version=card.version, kind=card.kind, provider=provider).set(1)
        self._ready.set()
        metrics.READY.set(1)
        log.info("ready: %s %s on %s", model.card.name, model.card.version, model.providers)

    async def load_in_background(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except ModelLoadError:
            pass  # recorded in load_error; /readyz reports it

    # --- serving -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def close(self) -> None:
        """Stop the batching threads (at shutdown, after the last request)."""
        if self.pipeline is not None:
            self.pipeline.model.close()

    def require_pipeline(self) -> FacePipeline:
        if not self.ready or self.pipeline is None:
            raise ModelNotReady(self.load_error or "models are still loading and warming up; retry shortly")
        return self.pipeline


def _detector_provider(detector: MTCNN) -> str:
    return primary_provider(detector.pnet)
