"""Micro-batching across requests: faces of concurrent requests share one graph call.

A :class:`MicroBatcher` owns one graph. Requests hand it their faces (already normalised,
``(B, ...)`` float32) from their worker threads and block until their rows come back. One
thread per batcher takes the oldest waiting job, adds every job that arrives within
``max_wait_s`` of it (never more than ``max_faces`` rows in all), runs the graph once on the
concatenation and hands each job its own rows.

It waits only for requests that can still come: callers announce themselves with
:meth:`MicroBatcher.expect` for the whole time they may submit (a request entering the
pipeline), and the batcher stops waiting as soon as every announced request has submitted. A
lone request therefore never waits, and ``max_wait_s`` bounds the wait otherwise.

A job larger than ``max_faces`` runs on its own, in chunks of ``max_faces``. The rows of a
batched call equal those of a call with the job alone up to the graph's float rounding across
batch sizes (measured: 5e-7 on logits; tests/test_batching.py states the tolerance).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.errors import InternalError

log = logging.getLogger(__name__)

Graph = Callable[[np.ndarray], np.ndarray]  # (N, ...) float32 in -> (N, ...) out, row for row


@dataclass
class _Job:
    rows: np.ndarray
    queued_at: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


def run_in_chunks(graph: Graph, rows: np.ndarray, size: int) -> np.ndarray:
    """``graph`` on ``rows`` in calls of at most ``size`` rows; the outputs in row order."""
    if rows.shape[0] <= size:
        return graph(rows)
    return np.concatenate([graph(rows[start : start + size]) for start in range(0, rows.shape[0], size)], axis=0)


class MicroBatcher:
    """Batches calls of one graph across threads.

    Args:
        graph: runs the graph on ``(N, ...)`` rows and returns ``(N, ...)`` outputs.
        name: the graph's name, for the metrics' ``graph`` label.
        max_faces: rows per graph call at most.
        max_wait_s: how long the oldest job may wait for others to join it.
    """

    def __init__(self, graph: Graph, *, name: str, max_faces: int, max_wait_s: float) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self.graph = graph
        self.name = name
        self.max_faces = max_faces
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._expected = 0  # announced callers that may still submit
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Announce a caller that may submit while the block runs (one request's lifetime)."""
        with self._cond:
            self._expected += 1
        try:
            yield
        finally:
            with self._cond:
                self._expected -= 1
                self._cond.notify_all()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Run the graph on ``rows`` as part of whatever batch forms; blocks until done."""
        if len(rows) == 0:
            return self.graph(rows)
        job = _Job(rows=rows)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            self._queue.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.result is None:
            raise InternalError(f"the {self.name} batcher finished a job without its result")
        return job.result

    def queued(self) -> int:
        """Jobs waiting for their batch to start."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Stop the batching thread once the jobs already queued are done."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # --- the batching thread ------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._run(jobs)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].queued_at + self.max_wait_s
            while not self._closed:
                rows = sum(len(j.rows) for j in self._queue)
                # Every announced caller (each one a request that submits at most once at a
                # time) has submitted, or the batch is full: waiting cannot add anything.
                if rows >= self.max_faces or len(self._queue) >= self._expected:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs = [self._queue.popleft()]
            rows = len(jobs[0].rows)
            while self._queue and rows + len(self._queue[0].rows) <= self.max_faces:
                rows += len(self._queue[0].rows)
                jobs.append(self._queue.popleft())
            return jobs

    def _run(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        for job in jobs:
            metrics.BATCH_WAIT.labels(graph=self.name).observe(started - job.queued_at)
        metrics.BATCH_REQUESTS.labels(graph=self.name).observe(len(jobs))
        try:
            rows = np.concatenate([j.rows for j in jobs], axis=0) if len(jobs) > 1 else jobs[0].rows
            out = run_in_chunks(self.graph, rows, self.max_faces)
        except BaseException as exc:  # handed to every waiting request, which re-raises it
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        start = 0
        for job in jobs:
            job.result = out[start : start + len(job.rows)]
            start += len(job.rows)
            job.done.set()
