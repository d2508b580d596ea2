"""Several worker processes (PFVIT_WORKERS): a real server on loopback with 2 workers, each with
its own models; answers come from both, and /metrics, whichever worker answers it, adds up
every worker's counts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import stub_server_env
from tests.prometheus_text import sample_value
from tools.loopback import serving

ROUTE = "/v1/recognize"


def _per_worker(exposition: str, name: str) -> dict[str, float]:
    """``{pid: value}`` of a per-worker gauge."""
    return {
        s.labels["pid"]: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and "pid" in s.labels
    }


def _wait_all_workers_ready(url: str, workers: int, timeout_s: float = 90.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = _per_worker(httpx.get(url + "/metrics").text, "pfvit_ready")
        if len(ready) == workers and all(v == 1.0 for v in ready.values()):
            return ready
        time.sleep(0.2)
    raise AssertionError(f"not every worker ready within {timeout_s} s: {ready}")


def test_two_workers_share_the_load_and_their_metrics(settings, astronaut_bytes) -> None:
    env = stub_server_env(settings, PFVIT_WORKERS="2", PFVIT_LOG_LEVEL="warning")
    with serving(env, timeout_s=90.0) as url:
        ready = _wait_all_workers_ready(url, 2)
        before = httpx.get(url + "/metrics").text
        answered_before = _per_worker(before, "pfvit_worker_http_requests")

        def recognise(_: int) -> int:
            # A new connection per request: the kernel hands each one to whichever worker accepts it.
            with httpx.Client(timeout=30) as client:
                return client.post(url + ROUTE, files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code

        sent = 0
        after = before
        # Bounded: at most 4 rounds of 8 requests, until both workers have answered some.
        for _ in range(4):
            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(recognise, range(8))) == [200] * 8
            sent += 8
            after = httpx.get(url + "/metrics").text
            answered = _per_worker(after, "pfvit_worker_http_requests")
            grew = [pid for pid in ready if answered.get(pid, 0) > answered_before.get(pid, 0) + 1]  # + the scrape
            if len(grew) == 2:
                break
        assert len(grew) == 2, f"answers came from {grew} only, of workers {list(ready)}"

        # The counters add up across workers, whichever worker answered the scrape.
        count = lambda text: sample_value(text, "pfvit_http_requests_total", route=ROUTE, method="POST", status="200")  # noqa: E731
        assert count(after) - count(before) == sent
        faces = lambda text: sample_value(text, "pfvit_faces_total", route=ROUTE)  # noqa: E731
        assert faces(after) - faces(before) == sent  # one face in the fixture photo
        assert sample_value(after, "pfvit_http_requests_in_flight") >= 1  # the scrape itself, summed over live workers
        assert sample_value(after, "process_resident_memory_bytes") > 100 * 2**20  # both workers' models together
        # Readiness per worker: each one answers /readyz from its own state.
        assert all(httpx.get(url + "/readyz").status_code == 200 for _ in range(4))
