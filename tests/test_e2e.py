"""The real server: `python -m service` on 127.0.0.1, called over HTTP."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
REF_BOX = np.array([181.1, 62.2, 267.7, 172.1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env_extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PFVIT_HOST": "127.0.0.1", "PFVIT_PORT": str(port), "PFVIT_PROVIDERS": "cpu", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(models_dir):
    proc, url = start({"PFVIT_MODELS_DIR": str(models_dir), "PFVIT_EMOTION_MODEL": "stub-emotion", "PFVIT_INTRA_OP_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("server did not become ready within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_recognize_over_http(server, astronaut_bytes):
    resp = httpx.post(server + "/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}, timeout=30)
    assert resp.status_code == 200
    face = resp.json()["images"][0]["faces"][0]
    assert np.abs(np.array([face["box"][k] for k in ("x1", "y1", "x2", "y2")]) - REF_BOX).max() < 2.0


def test_concurrent_clients_all_answered(server, astronaut_bytes):
    """A bounded burst: 4 clients x 3 requests, mixed good and bad; none lost, none 5xx."""

    def call(i: int) -> int:
        data = astronaut_bytes if i % 3 else b"not an image"
        return httpx.post(server + "/v1/recognize", files={"images": ("a.png", data, "image/png")}, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(call, range(12)))
    assert codes.count(200) == 8 and codes.count(422) == 4
    metrics = httpx.get(server + "/metrics", timeout=10).text
    assert 'pfvit_http_requests_total{method="POST",route="/v1/recognize",status="200"} 9.0' in metrics
    assert "pfvit_http_requests_in_flight 1.0" in metrics  # only the scrape itself


def test_refuses_to_start_without_emotion_model(tmp_path, models_dir):
    proc, _ = start({"PFVIT_MODELS_DIR": str(models_dir), "PFVIT_EMOTION_MODEL": "no-such-model"})
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "no emotion model at" in out and "no-such-model" in out
