"""Rolling updates lose nothing: on SIGTERM ``/readyz`` turns 503 at once, requests that
still arrive during the drain are served, and every request accepted before the listener
closes gets its answer (``service/shutdown.py``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import stub_server_env, wait_ready
from tools.loopback import start_server, stop_server, wait_until_ready

DRAIN_S = 3.0
IMAGES_PER_REQUEST = 4
REQUESTS = 8


def test_draining_turns_readiness_off_and_keeps_serving(settings, astronaut_bytes: bytes) -> None:
    """What the drain does to the app itself (no signal): /readyz 503 'draining', pfvit_ready
    0, /v1/models still describes the loaded models, and analysis requests are still served."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        client.app.state.service.begin_draining()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining" and "Retry-After" in ready.headers
        assert client.get("/healthz").status_code == 200
        assert re.search(r"^pfvit_ready 0\.0$", client.get("/metrics").text, re.M)
        models = client.get("/v1/models").json()
        assert models["ready"] is False and all(g["providers"] for m in models["models"] for g in m["graphs"].values())
        assert (
            client.post("/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code == 200
        )


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return float(re.search(r"^pfvit_http_requests_in_flight(?:\{\})? (\S+)$", text, re.M).group(1))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_every_request_and_turns_readiness_off_at_once(
    settings, astronaut_bytes: bytes, workers: int
) -> None:
    """One server process, and two workers (the supervisor passes SIGTERM to each, and each drains)."""
    env = stub_server_env(
        settings,
        PFVIT_SHUTDOWN_DRAIN_S=str(DRAIN_S),
        PFVIT_SHUTDOWN_TIMEOUT_S="30",
        PFVIT_MAX_QUEUE="32",
        PFVIT_REQUEST_TIMEOUT_S="60",
        PFVIT_WORKERS=str(workers),
    )
    proc, url = start_server(env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = [("images", (f"a{i}.png", astronaut_bytes, "image/png")) for i in range(IMAGES_PER_REQUEST)]

    def recognize() -> int:
        # A fresh client each: one connection per request, as many load balancers send them.
        with httpx.Client(timeout=60) as client:
            return client.post(url + "/v1/recognize", files=files).status_code

    try:
        wait_until_ready(proc, url, timeout_s=90)
        deadline = time.monotonic() + 60
        while (
            len(re.findall(r"^pfvit_ready(?:\{[^}]*\})? 1\.0$", httpx.get(url + "/metrics", timeout=5).text, re.M))
            < workers
        ):
            assert time.monotonic() < deadline, "not every worker became ready"
            time.sleep(0.1)
        with ThreadPoolExecutor(REQUESTS + 1) as pool:
            accepted = [pool.submit(recognize) for _ in range(REQUESTS)]
            deadline = time.monotonic() + 30
            while _in_flight(url) < REQUESTS + 1:  # the scrape counts itself
                assert time.monotonic() < deadline, "the requests never were all in flight"
                assert not any(f.done() for f in accepted), (
                    "a request finished before all were in flight; make them heavier"
                )
            os.kill(proc.pid, signal.SIGTERM)
            signalled = time.monotonic()

            # /readyz says 503 at once (poll with a deadline, no fixed wait), and never 200 again.
            first_503 = None
            while first_503 is None:
                assert time.monotonic() - signalled < 2.0, "/readyz did not turn 503 within 2 s of SIGTERM"
                answer = httpx.get(url + "/readyz", timeout=5)
                if answer.status_code == 503:
                    assert answer.json()["status"] == "draining"
                    first_503 = time.monotonic() - signalled
            # A request arriving during the drain is still served: the listener is still open.
            late = pool.submit(recognize)
            assert httpx.get(url + "/readyz", timeout=5).status_code == 503
            statuses = [f.result(timeout=60) for f in accepted] + [late.result(timeout=60)]
        assert statuses == [200] * (REQUESTS + 1)
        # After the drain the listener closes and the process exits, within its shutdown bound.
        proc.wait(timeout=DRAIN_S + 30)
        assert time.monotonic() - signalled >= DRAIN_S * 0.9
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/readyz", timeout=2)
    finally:
        stop_server(proc)
    assert first_503 < 1.0
