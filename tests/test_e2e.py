"""The real server: `python -m service` on 127.0.0.1, called over HTTP."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.prometheus_text import sample_value
from tools.loopback import serving, start_server

REF_BOX = np.array([181.1, 62.2, 267.7, 172.1])


@pytest.fixture(scope="module")
def server(models_dir):
    with serving(
        {
            "PFVIT_MODELS_DIR": str(models_dir),
            "PFVIT_EMOTION_MODEL": "stub-emotion",
            "PFVIT_PROVIDERS": "cpu",
            "PFVIT_INTRA_OP_THREADS": "1",
        }
    ) as url:
        yield url


def test_recognize_over_http(server, astronaut_bytes):
    resp = httpx.post(server + "/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}, timeout=30)
    assert resp.status_code == 200
    face = resp.json()["images"][0]["faces"][0]
    assert np.abs(np.array([face["box"][k] for k in ("x1", "y1", "x2", "y2")]) - REF_BOX).max() < 2.5


def test_concurrent_clients_all_answered(server, astronaut_bytes):
    """A bounded burst: 4 clients x 3 requests, mixed good and bad; none lost, none 5xx."""

    def call(i: int) -> int:
        data = astronaut_bytes if i % 3 else b"not an image"
        return httpx.post(
            server + "/v1/recognize", files={"images": ("a.png", data, "image/png")}, timeout=60
        ).status_code

    def answered(metrics: str, status: str) -> float:
        return sample_value(metrics, "pfvit_http_requests_total", method="POST", route="/v1/recognize", status=status)

    before = httpx.get(server + "/metrics", timeout=10).text
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(call, range(12)))
    assert codes.count(200) == 8 and codes.count(422) == 4
    after = httpx.get(server + "/metrics", timeout=10).text
    assert answered(after, "200") - answered(before, "200") == 8
    assert answered(after, "422") - answered(before, "422") == 4
    assert sample_value(after, "pfvit_http_requests_in_flight") == 1.0  # only the scrape itself
    assert sample_value(after, "pfvit_ready") == 1.0


def test_refuses_to_start_without_emotion_model(tmp_path, models_dir):
    proc, _ = start_server(
        {"PFVIT_MODELS_DIR": str(models_dir), "PFVIT_EMOTION_MODEL": "no-such-model"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "no emotion model at" in out and "no-such-model" in out
