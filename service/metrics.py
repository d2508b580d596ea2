"""Every Prometheus metric the service exports, declared in one place.

Labels come from bounded sets only: route templates (never raw paths), HTTP methods and
status codes, the fixed stage and graph names below, problem slugs, and the loaded models.

With several worker processes (``PFVIT_WORKERS``), ``pfvit-serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before it starts them: every worker writes its
values there and ``/metrics``, whichever worker answers it, reads them all
(:func:`scrape_registry`). Counters and histograms add up; each gauge says how its workers'
values combine (``multiprocess_mode``); the per-worker gauges carry a ``pid`` label. One worker
(the default) exports exactly what it always did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
# The client library's default process_* (RSS, CPU, open fds), python_gc_* and python_info
# series, on the registry we export.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

STAGES = ("queue", "decode", "detect", "align", "infer", "generate", "encode")
GRAPHS = ("recognition", "poker_face")
# HTTP methods counted under their own name; any other token a client sends is "other".
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ABANDON_REASONS = ("deadline", "disconnect", "shutdown")


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


# Latency buckets from 1 ms to 30 s: a tiny face crop on GPU up to a large batch on CPU.
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "pfvit_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "pfvit_http_request_duration_seconds",
    "Time from request start to response end, by route template.",
    ["route"],
    buckets=_LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge(
    "pfvit_http_requests_in_flight",
    "Requests being handled right now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
WORKER_REQUESTS = Gauge(
    "pfvit_worker_http_requests",
    "HTTP requests answered by this worker process since it started (several workers: one series per worker, "
    "label pid).",
    registry=REGISTRY,
    multiprocess_mode="liveall",
)
STAGE_LATENCY = Histogram(
    "pfvit_stage_duration_seconds",
    "Time spent per stage in one request (queue wait, decode, detect, align, infer, generate, encode).",
    ["stage"],
    buckets=_LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
FACES_PER_IMAGE = Histogram(
    "pfvit_faces_per_image",
    "Faces found (or given, for aligned uploads) per image.",
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100),
    registry=REGISTRY,
)
FACES = Counter(
    "pfvit_faces",
    "Faces processed, by route template.",
    ["route"],
    registry=REGISTRY,
)
IMAGES = Counter(
    "pfvit_images",
    "Images processed, by route template.",
    ["route"],
    registry=REGISTRY,
)
INFERENCE_BATCH = Histogram(
    "pfvit_inference_batch_size",
    "Faces per ONNX Runtime call, by graph.",
    ["graph"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
# --- micro-batching across requests (service/batching.py)
BATCH_WAIT = Histogram(
    "pfvit_batch_queue_wait_seconds",
    "Time a request's faces waited for their batch to start, by graph.",
    ["graph"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
BATCH_REQUESTS = Histogram(
    "pfvit_batch_requests",
    "Requests whose faces shared one batch, by graph.",
    ["graph"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
    registry=REGISTRY,
)
ERRORS = Counter(
    "pfvit_errors",
    "Problem documents returned, by problem type slug.",
    ["type"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "pfvit_model_info",
    "Loaded models (value 1): name, version, kind and the execution provider actually in use.",
    ["model", "version", "kind", "provider"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
PROVIDER_FALLBACK = Gauge(
    "pfvit_provider_fallback",
    "1 when a loaded model runs on another execution provider than the first one asked for (PFVIT_PROVIDERS=auto "
    "on a machine where CUDA cannot load: CPU instead), else 0; by model and the provider asked for.",
    ["model", "requested"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
QUEUE_DEPTH = Gauge(
    "pfvit_queue_depth",
    "Analysis requests waiting for a computing slot right now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "pfvit_queue_wait_seconds",
    "Time an analysis request waited for a computing slot.",
    buckets=_LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
ABANDONED = Counter(
    "pfvit_requests_abandoned",
    "Analysis requests whose computation was stopped early, by reason (deadline, disconnect, shutdown).",
    ["reason"],
    registry=REGISTRY,
)
READY = Gauge(
    "pfvit_ready",
    "1 once every model is loaded and warmed up, else 0; 0 again from SIGTERM on (several workers: one series per "
    "worker, label pid).",
    registry=REGISTRY,
    multiprocess_mode="liveall",
)
CPU_CORES = Gauge(
    "pfvit_cpu_cores",
    "CPU cores this server sized its threads for: the smaller of its affinity mask and its cgroup CPU quota, "
    "rounded up (a worker's detector threads, and its ONNX Runtime pools when the machine has more cores).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)

# Pre-create the bounded children so every series exists (at zero) from the first scrape.
for _stage in STAGES:
    STAGE_LATENCY.labels(stage=_stage)
for _graph in GRAPHS:
    INFERENCE_BATCH.labels(graph=_graph)
    BATCH_WAIT.labels(graph=_graph)
    BATCH_REQUESTS.labels(graph=_graph)
for _reason in ABANDON_REASONS:
    ABANDONED.labels(reason=_reason)


# --- several worker processes --------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """The folder the workers share their values through, when there are several."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


class WorkersMemoryCollector:
    """``process_resident_memory_bytes`` summed over the live worker processes: the client
    library's process collector sees only the process that answers the scrape."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Live workers: those with live-gauge files (a worker's are removed when it exits).
        pids = {
            int(f.stem.rsplit("_", 1)[1])
            for f in self.path.glob("gauge_live*_*.db")
            if f.stem.rsplit("_", 1)[1].isdigit()
        }
        page = os.sysconf("SC_PAGE_SIZE")
        total = 0
        for pid in pids:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):  # gone, or not Linux
                continue
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of all worker processes together, bytes.", value=total
        )


def scrape_registry() -> CollectorRegistry:
    """What ``/metrics`` exports: this process's registry, or with several workers every
    worker's values read from the shared folder."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    registry.register(WorkersMemoryCollector(path))
    return registry


def worker_exited(pid: int | None = None) -> None:
    """Drop a worker's live gauges from the shared folder: this process's at its shutdown, or
    (from the supervising process) those of a worker that died without shutting down, so that
    no gauge keeps the last values of a process that is gone."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid)
