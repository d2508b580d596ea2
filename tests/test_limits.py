"""Limits that need their own settings: request size and pixel count."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import wait_ready
from tests.images import encode


@pytest.fixture(scope="module")
def tight_client(settings):
    tight = settings.model_copy(update={"max_upload_bytes": 200_000, "max_image_pixels": 300 * 300})
    with TestClient(create_app(tight)) as c:
        wait_ready(c)
        yield c


def test_upload_over_byte_limit_is_413(tight_client, astronaut_bytes):
    assert len(astronaut_bytes) > 200_000
    resp = tight_client.post("/v1/recognize", files=[("images", ("a.png", astronaut_bytes, "image/png"))])
    assert resp.status_code == 413 and resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["type"].endswith("/payload-too-large")


def test_upload_over_limit_without_content_length_is_413(tight_client):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    resp = tight_client.post(
        "/v1/recognize", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert resp.status_code == 413


def test_too_many_pixels_is_413(tight_client, astronaut_rgb):
    small_file = encode(astronaut_rgb[::2, ::2].copy(), "JPEG", quality=70)  # 256x256: allowed
    assert (
        tight_client.post("/v1/recognize", files=[("images", ("s.jpg", small_file, "image/jpeg"))]).status_code == 200
    )
    big = encode(np.zeros((400, 400, 3), np.uint8), "PNG")  # tiny file, 160000 pixels > 90000
    resp = tight_client.post("/v1/recognize", files=[("images", ("b.png", big, "image/png"))])
    assert resp.status_code == 413 and resp.json()["type"].endswith("/image-too-large")
    assert tight_client.get("/readyz").status_code == 200
