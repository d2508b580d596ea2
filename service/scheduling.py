"""Every scheduling decision of the service, in one place: :class:`Scheduler`.

The models themselves own no threads and count nothing: the MTCNN cascade takes the threads a
call may use as an argument (``service.vision.mtcnn.Workers``), and the emotion model runs its
graphs through the batchers the scheduler gives it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from service import metrics
from service.batching import Graph, MicroBatcher, run_in_chunks
from service.errors import DeadlineExceeded, QueueFull
from service.vision.mtcnn import INLINE, MTCNN, FaceDetection

T = TypeVar("T")


class AdmissionGate:
    """At most ``slots`` requests compute at once and at most ``max_queue`` wait for a slot.

    A request beyond the queue is refused at once (503 with Retry-After) rather than left to
    wait past its deadline. A slot is given back by ``release``, which the caller runs when
    its worker thread has really stopped, not when the request was answered: a thread still
    running for an abandoned request still uses the CPU.
    """

    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots = slots
        self._slots = asyncio.Semaphore(slots)
        self.max_queue = max_queue
        self.waiting = 0

    async def acquire(self, timeout_s: float) -> float:
        """Wait for a slot; returns the seconds waited.

        Raises:
            QueueFull: no slot is free and ``max_queue`` requests already wait.
            DeadlineExceeded: no slot came free within ``timeout_s``.
        """
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull(f"all computing slots are busy and {self.waiting} requests are waiting; retry shortly")
        start = time.perf_counter()
        self.waiting += 1
        metrics.QUEUE_DEPTH.set(self.waiting)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=max(timeout_s, 0.0))
        except asyncio.TimeoutError as exc:  # TimeoutError from 3.11 on
            raise DeadlineExceeded(f"no computing slot came free within the deadline of {timeout_s:.1f} s") from exc
        finally:
            self.waiting -= 1
            metrics.QUEUE_DEPTH.set(self.waiting)
        waited = time.perf_counter() - start
        metrics.QUEUE_WAIT.observe(waited)
        return waited

    def release(self) -> None:
        self._slots.release()


class SharedThreads:
    """``service.vision.mtcnn.Workers`` over a thread pool: pieces start in the pool and are
    collected in order."""

    def __init__(self, pool: ThreadPoolExecutor, width: int) -> None:
        self._pool = pool
        self.width = width

    def start(self, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
        return self._pool.submit(fn, *args).result


class DetectorThreads:
    """The detector's threads and the rule that shares them (:class:`Scheduler` states it)."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"detector threads must be at least 1, got {threads}")
        self.threads = threads
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mtcnn") if threads > 1 else None
        self._shared = SharedThreads(self._pool, threads) if self._pool is not None else None

    @property
    def in_flight(self) -> int:
        """Detections and refinements running now."""
        with self._lock:
            return self._in_flight

    @contextmanager
    def _counted(self) -> Iterator[bool]:
        """Count one call in flight for its duration; yields whether it started alone."""
        with self._lock:
            self._in_flight += 1
            alone = self._in_flight == 1
        try:
            yield alone
        finally:
            with self._lock:
                self._in_flight -= 1

    def detect(self, detector: MTCNN, image: np.ndarray, **kwargs: Any) -> list[FaceDetection]:
        with self._counted() as alone:
            pool, shared = self._pool, self._shared
            if pool is None or shared is None:
                return detector.detect(image, workers=INLINE, **kwargs)
            if alone:
                return detector.detect(image, workers=shared, **kwargs)
            # Another detection is in flight: this one takes a thread of the pool whole.
            return pool.submit(lambda: detector.detect(image, workers=INLINE, **kwargs)).result()

    def refine(self, detector: MTCNN, image: np.ndarray, box: Sequence[float]) -> FaceDetection | None:
        with self._counted():
            return detector.refine(image, box, workers=self._shared or INLINE)

    def close(self) -> None:
        """Stop the threads (idempotent); detections then run in the calling thread."""
        pool, self._pool, self._shared = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True)


class ScheduledDetector:
    """A cascade whose calls go through the detector threads: what the pipeline detects with
    (``service.vision.faces.Detector``)."""

    def __init__(self, cascade: MTCNN, threads: DetectorThreads) -> None:
        self.cascade = cascade
        self.threads = threads

    def detect(
        self, image: np.ndarray, *, min_face_size: int | None = None, threshold: float | None = None
    ) -> list[FaceDetection]:
        return self.threads.detect(self.cascade, image, min_face_size=min_face_size, threshold=threshold)

    def refine(self, image: np.ndarray, box: Sequence[float]) -> FaceDetection | None:
        return self.threads.refine(self.cascade, image, box)


class Scheduler:
    """Who computes when: computing slots, the detector's threads and micro-batching.

    The policy:

    1. **Computing slots.** At most ``slots`` requests compute at once (on the CPU two, on a GPU
       four: ``service.state.ServiceState.computing_slots``); at most ``max_queue`` more wait
       for a slot, within their deadline, and any beyond that are refused at once (503). A
       request's work runs in a worker thread of its own (:meth:`start_computing`), and its slot
       is given back only when that thread has stopped, not when the request was answered: a
       thread still running for an abandoned request still uses the CPU.
    2. **Detector threads.** ``detect_threads`` threads (one per usable core by default) serve
       every detection. A detection that starts while no other is in flight shares its pieces
       over all of them: the pyramid's direct levels, P-Net's bands and levels, and the R-Net and
       O-Net calls, on single-threaded sessions (ONNX Runtime and Pillow release the GIL, so
       that keeps as many cores busy, with less waiting than one session's intra-op threads
       spread over every small operator). A detection that starts while another is in flight
       takes one of the threads whole and works in it alone: the cores are then busy with two
       photos already, and sharing out its work would only add waiting (docs/benchmarks.md).
       A refinement (O-Net alone on a full-resolution photo) shares the threads. Every
       network call runs in these threads, so only they grow ONNX Runtime's per-thread
       buffers. With one thread, everything runs in the request's own thread.
    3. **Micro-batching.** Each emotion graph has one batching thread (``service.batching``):
       the faces of requests computing at once share one call of at most ``max_batch`` faces,
       and a batch waits at most ``batch_wait_s`` for requests that announced themselves and
       have not submitted yet; a lone request never waits. ``batch_wait_s`` None runs each
       request's faces on their own, in calls of ``max_batch``.

    Reading a request's body (splitting a multipart form, decoding a JSON body's base64) comes
    before admission and takes no slot: it runs in asyncio's default worker threads
    (``service.api.analysis``), so that the event loop keeps answering other clients.

    The detections and the emotion outputs do not depend on any of it: only the order of the
    calls does (and the float rounding of a batch, tests/test_batching.py).
    """

    def __init__(
        self, *, slots: int, max_queue: int, detect_threads: int, max_batch: int, batch_wait_s: float | None
    ) -> None:
        self.gate = AdmissionGate(slots, max_queue)
        self.detector_threads = DetectorThreads(detect_threads)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._batchers: list[MicroBatcher] = []

    # --- computing slots -----------------------------------------------------------------

    async def admit(self, timeout_s: float) -> float:
        """Wait for a computing slot (:class:`AdmissionGate`); returns the seconds waited."""
        return await self.gate.acquire(timeout_s)

    def start_computing(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run ``fn`` in a worker thread of its own, holding the slot :meth:`admit` gave; the
        slot is given back when the thread stops (on the running event loop)."""
        worker = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        worker.add_done_callback(lambda _: self.gate.release())
        return worker

    # --- detection ----------------------------------------------------------------------

    def detector(self, cascade: MTCNN) -> ScheduledDetector:
        """The cascade, scheduled on the detector threads."""
        return ScheduledDetector(cascade, self.detector_threads)

    # --- micro-batching -----------------------------------------------------------------

    def batched(self, graph: Graph, name: str) -> Graph:
        """``graph`` as the requests call it: through a batcher of its own, or in chunks of
        ``max_batch`` when batching is off."""
        if self.batch_wait_s is None:
            size = self.max_batch
            return lambda x: run_in_chunks(graph, x, size)
        batcher = MicroBatcher(graph, name=name, max_faces=self.max_batch, max_wait_s=self.batch_wait_s)
        self._batchers.append(batcher)
        return batcher

    def close(self) -> None:
        """Stop the batching threads and the detector's threads (after the last request)."""
        for batcher in self._batchers:
            batcher.close()
        self.detector_threads.close()
