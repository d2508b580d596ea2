"""Liveness and readiness: 503 until every model is loaded and warmed up, and after a failed load
(in-process; tests/test_hardening_server.py checks that `pfvit-serve` then exits)."""

import json
import shutil
import threading

from fastapi.testclient import TestClient

from service.app import create_app
from service.card import sha256_file
from service.state import ServiceState
from tests.conftest import wait_ready


def test_not_ready_until_warm(monkeypatch, settings, astronaut_bytes):
    release = threading.Event()
    original = ServiceState.load

    def slow_load(self):
        assert release.wait(30), "test never released the loader"
        original(self)

    monkeypatch.setattr(ServiceState, "load", slow_load)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        busy = client.post("/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")})
        assert busy.status_code == 503 and busy.headers["content-type"].startswith("application/problem+json")
        assert busy.json()["type"].endswith("/not-ready") and busy.headers["retry-after"] == str(settings.retry_after_s)
        assert client.get("/v1/models").json()["ready"] is False
        assert "pfvit_ready 0.0" in client.get("/metrics").text
        release.set()
        wait_ready(client)
        assert "pfvit_ready 1.0" in client.get("/metrics").text
        assert (
            client.post("/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code == 200
        )


def test_failed_load_is_reported(tmp_path, settings):
    # A graph that passes its checksum (the card is rewritten to match) but is not ONNX.
    models = tmp_path / "models"
    shutil.copytree(settings.models_dir, models)
    graph = models / "stub-emotion" / "recognition.onnx"
    graph.write_bytes(b"this is not an onnx file")
    card_path = models / "stub-emotion" / "card.json"
    card = json.loads(card_path.read_text())
    card["graphs"]["recognition"]["sha256"] = sha256_file(graph)
    card_path.write_text(json.dumps(card))
    with TestClient(create_app(settings.model_copy(update={"models_dir": models}))) as client:
        for _ in range(200):
            body = client.get("/readyz").json()
            if body["status"] != "loading":
                break
            threading.Event().wait(0.05)
        assert body["status"] == "failed" and body["detail"]
        # Clients never see server paths (the server log has the full reason).
        assert str(models) not in body["detail"] and "/" not in body["detail"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
