"""`pfvit-serve` on 127.0.0.1 under load and faults: a full queue answers 503 with
Retry-After, a client that hangs up stops its work, one JSON log line per request, and a
model fault found while loading makes the process exit non-zero."""

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.card import sha256_file
from tests.conftest import stub_server_env
from tests.images import encode
from tests.prometheus_text import sample_value
from tools.loopback import serving, start_server, stop_server, wait_until_ready

pytestmark = pytest.mark.slow


def _multipart(files: list[tuple[str, bytes]], boundary: str) -> bytes:
    parts = []
    for name, data in files:
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="images"; filename="{name}"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.fixture(scope="module")
def slow_images(astronaut_rgb) -> list[tuple[str, bytes]]:
    """Sixteen distinct 512 px photos: about a second of detection on one slot."""
    return [(f"{i}.png", encode(np.roll(astronaut_rgb, i * 5, axis=1).copy(), "PNG")) for i in range(16)]


@pytest.fixture(scope="module")
def one_slot_server(settings, tmp_path_factory):
    """One computing slot, one place in the queue, JSON logs into a file."""
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    env = stub_server_env(
        settings,
        PFVIT_MAX_CONCURRENT_INFERENCE="1",
        PFVIT_MAX_QUEUE="1",
        PFVIT_RETRY_AFTER_S="3",
        PFVIT_LOG_FORMAT="json",
        PFVIT_BODY_TIMEOUT_S="1",
        PFVIT_HEADER_TIMEOUT_S="1",
    )
    with open(log_path, "w") as log:
        proc, url = start_server(env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(proc, url)
            yield url, log_path
        finally:
            stop_server(proc)


def _metric(url: str, name: str, **labels: str) -> float:
    return sample_value(httpx.get(url + "/metrics", timeout=5).text, name, **labels)


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_full_queue_answers_503_with_retry_after(one_slot_server, slow_images):
    url, _ = one_slot_server
    files = [("images", (name, data, "image/png")) for name, data in slow_images]
    answers: dict[str, httpx.Response] = {}

    def post(key: str) -> None:
        answers[key] = httpx.post(url + "/v1/recognize", files=files, timeout=60)

    computing = threading.Thread(target=post, args=("computing",))
    computing.start()
    _wait_for(lambda: _metric(url, "pfvit_http_requests_in_flight") >= 2)  # it and this scrape
    waiting = threading.Thread(target=post, args=("waiting",))
    waiting.start()
    _wait_for(lambda: _metric(url, "pfvit_queue_depth") == 1)
    refused = httpx.post(url + "/v1/recognize", files=files[:1], timeout=60)
    computing.join()
    waiting.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/queue-full")
    assert answers["computing"].status_code == 200 and answers["waiting"].status_code == 200
    assert answers["waiting"].json()["timings_ms"]["queue"] > 50  # it did wait its turn


def test_client_that_hangs_up_stops_its_work(one_slot_server, slow_images, astronaut_bytes):
    url, _ = one_slot_server
    host, port = url.removeprefix("http://").split(":")
    before = _metric(url, "pfvit_requests_abandoned_total", reason="disconnect")
    images_before = _metric(url, "pfvit_faces_per_image_count")
    boundary = uuid.uuid4().hex
    body = _multipart(slow_images, boundary)
    head = (
        f"POST /v1/recognize HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        # Hang up once it is in its stages: its first image is through detection.
        _wait_for(lambda: _metric(url, "pfvit_faces_per_image_count") > images_before)
    # The work stops at its next stage instead of computing all sixteen images for nobody.
    _wait_for(lambda: _metric(url, "pfvit_requests_abandoned_total", reason="disconnect") == before + 1)
    start = time.perf_counter()
    ok = httpx.post(url + "/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}, timeout=60)
    assert ok.status_code == 200 and time.perf_counter() - start < 5


def test_json_log_has_one_line_per_request_without_file_names(one_slot_server, astronaut_bytes):
    url, log_path = one_slot_server
    resp = httpx.post(
        url + "/v1/recognize",
        files={"images": ("secret-name.png", astronaut_bytes, "image/png")},
        headers={"X-Request-ID": "log-check-1"},
        timeout=60,
    )
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "log-check-1"
    # The access record is written as the response completes: wait for it, not for a while.
    _wait_for(lambda: '"log-check-1"' in log_path.read_text())
    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(records) == len(text.splitlines())  # every line is JSON
    (record,) = [r for r in records if r.get("request_id") == "log-check-1"]
    assert record["route"] == "/v1/recognize" and record["status"] == 200 and record["method"] == "POST"
    assert record["images"] == 1 and record["faces"] == 1 and record["model"] == "stub-emotion/0.0.1-test"
    assert record["provider"] == "CPUExecutionProvider" and {"queue", "detect", "total"} <= set(record["timings_ms"])
    assert "secret-name" not in text


def test_a_body_that_stalls_gets_408(one_slot_server):
    url, _ = one_slot_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/recognize HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 100000\r\n\r\n--x\r\n".encode()
        )
        answer = ""
        while "request-timeout" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk.decode("latin-1")
    assert answer.startswith("HTTP/1.1 408") and "application/problem+json" in answer and "request-timeout" in answer


def test_a_connection_that_stalls_in_its_headers_is_closed(one_slot_server):
    url, _ = one_slot_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A fast request first: the deadline restarts after each response.
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        first = b""
        while not first.endswith(b"}"):  # the whole first answer: headers and its JSON body
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        start = time.perf_counter()
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())  # and never the end
        assert sock.recv(65536) == b""  # closed by the server
        assert time.perf_counter() - start < 3.0  # by the 1 s header deadline, not the 5 s keep-alive


def test_malformed_http_gets_a_problem_document(one_slot_server):
    url, _ = one_slot_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/problem+json" in head
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["type"].endswith("/bad-request") and problem["request_id"]
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_the_answers_that_are_not_problem_documents(one_slot_server):
    """The README lists exactly which answers are not problem documents: a WebSocket handshake
    (uvicorn's WebSocket support is off) and a trailing slash (never a redirect) get problem
    documents; /readyz answers plain JSON."""
    url, _ = one_slot_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/socket HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404") and b"application/problem+json" in answer
    slash = httpx.post(url + "/v1/recognize/", headers={"Host": "evil.example"}, timeout=10)
    assert slash.status_code == 404 and "location" not in slash.headers
    assert slash.headers["content-type"].startswith("application/problem+json")
    not_ready_shape = httpx.get(url + "/readyz", timeout=10)
    assert not_ready_shape.status_code == 200 and not_ready_shape.headers["content-type"] == "application/json"


def test_shutdown_has_a_bound(settings, astronaut_rgb):
    env = stub_server_env(
        settings,
        PFVIT_SHUTDOWN_TIMEOUT_S="1",
        PFVIT_MAX_IMAGES="128",
        PFVIT_MAX_REQUEST_PIXELS="100000000",
        PFVIT_MAX_UPLOAD_BYTES=str(200 * 2**20),
    )
    proc, url = start_server(env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(proc, url)
        # 128 distinct photos: about ten seconds of work on one slot, far past the grace period.
        photos = [encode(np.roll(astronaut_rgb, i * 3, axis=0).copy(), "JPEG", quality=80) for i in range(128)]
        files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
        images_before = _metric(url, "pfvit_faces_per_image_count")
        client = threading.Thread(target=lambda: _post_quietly(url, files), daemon=True)
        client.start()
        # Terminate once the request is in its stages: its first image is through detection.
        _wait_for(lambda: _metric(url, "pfvit_faces_per_image_count") > images_before, timeout_s=60)
        start = time.perf_counter()
        proc.terminate()
        proc.wait(timeout=30)
        # The grace period (1 s) and at most one stage of the abandoned work.
        assert time.perf_counter() - start < 5.0
    finally:
        if proc.poll() is None:
            stop_server(proc)


def _post_quietly(url: str, files) -> None:
    try:
        httpx.post(url + "/v1/recognize", files=files, timeout=60)
    except httpx.HTTPError:
        pass  # the server went away: that is the point


def _broken_models(settings, tmp_path: Path, fault: str) -> Path:
    models = tmp_path / "models"
    shutil.copytree(settings.models_dir, models)
    card_path = models / "stub-emotion" / "card.json"
    card = json.loads(card_path.read_text())
    if fault == "unreadable-graph":
        # A file whose checksum matches (the card is rewritten) but that is not ONNX.
        graph = models / "stub-emotion" / "recognition.onnx"
        graph.write_bytes(b"this is not an onnx file")
        card["graphs"]["recognition"]["sha256"] = sha256_file(graph)
    elif fault == "label-count":
        card["labels"] = card["labels"][:-1]  # the graph still gives one logit more
    card_path.write_text(json.dumps(card))
    return models


@pytest.mark.parametrize(
    "fault, words, workers",
    [("unreadable-graph", "recognition.onnx", "1"), ("label-count", "labels", "1"), ("label-count", "labels", "2")],
)
def test_model_fault_found_while_loading_exits_non_zero(settings, tmp_path, fault, words, workers):
    """Found by a session or by warm-up, after the port is bound; with several workers, by any
    one of them, which stops them all."""
    models = _broken_models(settings, tmp_path, fault)
    env = {
        "PFVIT_MODELS_DIR": str(models),
        "PFVIT_EMOTION_MODEL": "stub-emotion",
        "PFVIT_PROVIDERS": "cpu",
        "PFVIT_WARMUP_RUNS": "1",
        "PFVIT_WORKERS": workers,
    }
    proc, _ = start_server(env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            stop_server(proc)
    assert proc.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pfvit: cannot start:") and words in last


def test_soak_tool_runs_briefly(settings):
    from tools.soak import soak

    env = stub_server_env(settings, PFVIT_LOG_LEVEL="warning")
    with serving(env) as url:
        # One client per kind of request: each client starts at its own place in the plan, so
        # every kind (the broken upload too) is sent however slow the machine is.
        report = asyncio.run(soak(url, clients=6, duration_s=2.0, deadline_s=30.0))
    assert report["requests"] > 0 and report["server_errors_other_than_503_504"] == 0
    assert report["broken_uploads_answered_4xx"] and report["over_deadline"] == 0
    assert set(report["rss_mib"]) == {"start", "minute_2_of_10", "middle", "end"} and report["rss_mib"]["end"] > 0
    assert report["latency_ms_200"]["all"]["p99"] is not None
