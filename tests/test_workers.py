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


def test_a_killed_worker_leaves_no_stale_gauges(settings) -> None:
    """A worker killed with requests in flight never runs its shutdown; the supervisor clears
    its live gauges, so /metrics stops counting its requests and its readiness."""
    import os
    import signal
    import socket

    env = stub_server_env(settings, PFVIT_WORKERS="2", PFVIT_LOG_LEVEL="warning", PFVIT_BODY_TIMEOUT_S="60")
    with serving(env, timeout_s=90.0) as url:
        ready = _wait_all_workers_ready(url, 2)
        host, port = url.removeprefix("http://").split(":")
        # Twelve requests held in flight (their bodies never finish), spread by the kernel over
        # both workers: the one killed below holds some of them (all twelve on one worker is
        # a 1 in 2048 chance).
        held = []
        for _ in range(12):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(
                f"POST /v1/recognize HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                "Content-Length: 100000\r\n\r\n--x\r\n".encode()
            )
            held.append(sock)
        deadline = time.monotonic() + 30
        while sample_value(httpx.get(url + "/metrics").text, "pfvit_http_requests_in_flight") < 13:  # + the scrape
            assert time.monotonic() < deadline, "the held requests never showed as in flight"
            time.sleep(0.1)
        victim = sorted(ready)[0]
        os.kill(int(victim), signal.SIGKILL)
        for sock in held:
            sock.close()
        # The live worker's held requests end when their clients go; the dead worker's must
        # vanish with it. Then only the scrape itself is in flight.
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(url + "/metrics").text
            in_flight = sample_value(text, "pfvit_http_requests_in_flight")
            pids = set(_per_worker(text, "pfvit_ready"))
            if victim not in pids and in_flight == 1:
                break
            assert time.monotonic() < deadline, (
                f"stale gauges of the killed worker {victim}: ready pids {pids}, in flight {in_flight}"
            )
            time.sleep(0.2)
        # The supervisor's replacement worker loads and reports ready in its own series.
        after = _wait_all_workers_ready(url, 2)
        assert victim not in after
