"""The service's life: check the models, load them, warm them up, then report ready.

Checking (cards present, checksums right) happens before the server accepts a connection,
so a missing or tampered model stops start-up with a message that says what is missing.
Creating sessions and warming up happen next, in a worker thread, while ``/healthz``
already answers and ``/readyz`` says 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from service import metrics
from service.card import ModelCard, load_card
from service.config import Settings
from service.errors import InternalError, ModelLoadError, ModelNotReady
from service.models import EmotionModel, emotion_files
from service.pipeline import FacePipeline
from service.runtime import (
    CPU,
    CpuBudget,
    ProviderOptions,
    SessionSpec,
    cpu_budget,
    primary_provider,
    required_provider,
    resolve_providers,
    single_threaded_blas,
)
from service.scheduling import Scheduler
from service.vision.mtcnn import MTCNN, detector_files, session_threads

log = logging.getLogger(__name__)

_MISSING_EMOTION_MODEL = (
    "no emotion model at {path}: put a trained PF-ViT export there (card.json plus its ONNX files; "
    "see README, 'Models'), or point PFVIT_MODELS_DIR / PFVIT_EMOTION_MODEL at one. "
    "The service never serves untrained weights."
)


# Requests computing at once when PFVIT_MAX_CONCURRENT_INFERENCE is 0. On the CPU two: the
# detector's threads already spread one request over every core, and a second request's
# single-threaded steps (decoding, NMS, alignment) fill the gaps between them (docs/benchmarks.md,
# `tools/bench_photos.py --sweep`). On a GPU four (not yet measured on one).
CPU_COMPUTING_SLOTS = 2
CUDA_COMPUTING_SLOTS = 4


class ServiceState:
    """Models, readiness and the scheduler (computing slots, detector threads, micro-batching:
    ``service.scheduling``) of one running service.

    ``preflight`` reads both cards and hashes every graph file, once; ``load`` creates the
    sessions from those verified files, so a start-up hashes each file exactly once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers = resolve_providers(settings.providers)
        self.required_provider = required_provider(settings.providers, self.providers)
        self.provider_options = ProviderOptions.from_settings(settings)
        if settings.providers.strip().lower() == "auto" and self.providers[0] == CPU:
            log.info(
                "PFVIT_PROVIDERS=auto: this ONNX Runtime build offers no CUDA provider (the gpu extra has "
                "it); running on the CPU"
            )
        self.detector_card: ModelCard | None = None
        self.emotion_card: ModelCard | None = None
        self.pipeline: FacePipeline | None = None
        self.cascade: MTCNN | None = None  # the detector's networks (the pipeline detects through the scheduler)
        self.load_error: str | None = None
        self._verified: dict[str, dict[str, Path]] | None = None  # model kind -> {graph: file}
        self._ready = threading.Event()
        self._draining = threading.Event()
        # Read once: the cores every pool of this process is sized for (reported by /v1/models).
        self.cpu: CpuBudget = cpu_budget()
        self.scheduler = Scheduler(
            slots=self.computing_slots,
            max_queue=settings.max_queue,
            detect_threads=self.detect_threads,
            max_batch=settings.max_inference_batch,
            batch_wait_s=settings.batch_max_wait_ms / 1000.0,
        )

    @property
    def computing_slots(self) -> int:
        """``PFVIT_MAX_CONCURRENT_INFERENCE``, or for 0 the default of the provider in use: on
        the CPU two requests at a time, whose detections share the detector's threads; on a GPU
        several, so that the CPU-side steps of one request overlap another's GPU work."""
        if self.settings.max_concurrent_inference:
            return self.settings.max_concurrent_inference
        return CPU_COMPUTING_SLOTS if self.providers[0] == CPU else CUDA_COMPUTING_SLOTS

    @property
    def detect_threads(self) -> int:
        """``PFVIT_DETECT_THREADS``, or for 0 one per usable core: the affinity mask or the
        cgroup CPU quota, whichever is smaller (``service.runtime.usable_cores``)."""
        return self.settings.detect_threads or self.cpu.cores

    @property
    def intra_op_threads(self) -> int:
        """``PFVIT_INTRA_OP_THREADS``, or for 0: the usable cores when the affinity mask or the
        CPU quota leaves fewer than the machine has (ONNX Runtime would size its pools for the
        whole machine: a pod limited to 2 CPUs on a 64-core node would start pools of 64
        threads, throttled by the quota), else 0, ONNX Runtime's own default."""
        if self.settings.intra_op_threads:
            return self.settings.intra_op_threads
        return self.cpu.cores if self.cpu.cores < (os.cpu_count() or 1) else 0

    # --- start-up ----------------------------------------------------------------------------

    @property
    def preflighted(self) -> bool:
        return self._verified is not None

    def preflight(self) -> None:
        """Fail fast: both cards readable and valid, every file present with the right sha256."""
        s = self.settings
        if not (s.emotion_model_dir / "card.json").is_file():
            raise ModelLoadError(_MISSING_EMOTION_MODEL.format(path=s.emotion_model_dir))
        if not (s.detector_model_dir / "card.json").is_file():
            raise ModelLoadError(
                f"no face-detector model at {s.detector_model_dir} (expected the MTCNN card and ONNX files)"
            )
        emotion_card = load_card(s.emotion_model_dir)
        detector_card = load_card(s.detector_model_dir)
        verified = {
            "emotion": emotion_files(emotion_card, s.emotion_model_dir),
            "detector": detector_files(detector_card, s.detector_model_dir),
        }
        self.emotion_card, self.detector_card, self._verified = emotion_card, detector_card, verified

    def load(self) -> None:
        """Create sessions from the verified files, check them against the cards, warm up;
        then flip ready."""
        s = self.settings
        try:
            if self._verified is None:
                self.preflight()
            if self._verified is None or self.emotion_card is None:
                raise InternalError("load: the preflight left no verified model files")
            single_threaded_blas()
            sessions = SessionSpec(
                providers=tuple(self.providers),
                intra_op_threads=self.intra_op_threads,
                cpu_arena=s.ort_cpu_arena,
                required=self.required_provider,
                provider_options=self.provider_options,
            )
            # The detector's threads are its parallelism: one ONNX Runtime thread per session
            # when there are several (session_threads).
            detector_sessions = replace(
                sessions, intra_op_threads=session_threads(self.detect_threads, self.intra_op_threads)
            )
            cascade = MTCNN.from_verified(self._verified["detector"], detector_sessions)
            detector = self.scheduler.detector(cascade)
            model = EmotionModel.from_verified(
                self.emotion_card,
                self._verified["emotion"],
                sessions,
                max_batch=s.max_inference_batch,
                batched=self.scheduler.batched,
            )
            # Warm-up: the detector on a small grey frame, every emotion graph on one face
            # (which also checks each graph's output shapes against the card).
            for _ in range(max(1, s.warmup_runs)):
                detector.detect(np.full((160, 160, 3), 127, np.uint8))
            model.warm_up(s.warmup_runs)
        except ModelLoadError as exc:
            self.load_error = exc.detail
            log.error("model loading failed: %s", exc.detail)
            raise
        self.cascade = cascade
        self.pipeline = FacePipeline(
            detector, model, max_image_pixels=s.max_image_pixels, detect_max_side=s.detect_max_side
        )
        for card, provider in ((model.card, model.provider), (self.detector_card, primary_provider(cascade.pnet))):
            if card is not None:
                metrics.MODEL_INFO.labels(model=card.name, version=card.version, kind=card.kind, provider=provider).set(
                    1
                )
                metrics.PROVIDER_FALLBACK.labels(model=card.name, requested=self.providers[0]).set(
                    int(provider != self.providers[0])
                )
        metrics.CPU_CORES.set(self.cpu.cores)
        self._ready.set()
        if not self.draining:
            metrics.READY.set(1)
        log.info("ready: %s %s on %s", model.card.name, model.card.version, model.providers)

    async def load_in_background(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Load in a worker thread; on a model fault, record it and call ``on_failure``
        (``pfvit-serve`` passes one that stops the server, which then exits non-zero)."""
        try:
            await asyncio.to_thread(self.load)
        except ModelLoadError as exc:
            if on_failure is not None:
                on_failure(exc.detail)

    # --- serving -----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Every model loaded and warmed up."""
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        """Loaded and not shutting down: what ``/readyz`` says."""
        return self._ready.is_set() and not self._draining.is_set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_draining(self) -> None:
        """The server got SIGTERM: from now on ``/readyz`` answers 503, so that load balancers
        stop sending requests, while requests still arriving are served as before
        (``service.shutdown``)."""
        if not self._draining.is_set():
            self._draining.set()
            metrics.READY.set(0)
            log.info("shutting down: /readyz answers 503 from now on; requests are still served")

    def close(self) -> None:
        """Stop the batching threads and the detector's threads (at shutdown, after the last request)."""
        self.scheduler.close()

    @property
    def public_status(self) -> str:
        """What clients may read about loading: never a server path or a model's internals."""
        if self.draining:
            return "the server is shutting down; requests are still answered until it stops listening"
        if self.ready:
            return "models loaded and warmed up"
        if self.load_error:
            return "model loading failed; the server log says why"
        return "models are still loading and warming up; retry shortly"

    def require_pipeline(self) -> FacePipeline:
        # Draining is no reason to refuse: requests that still arrive are answered.
        if not self.loaded or self.pipeline is None:
            raise ModelNotReady(self.public_status)
        return self.pipeline
