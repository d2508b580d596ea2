"""Hostile uploads, in process: every decode fault is a 4xx, formats are allow-listed before
Pillow parses anything, truncated and corrupt data is refused, pathological structure is
refused fast, and validation errors stay small. A seeded mutation corpus runs through the
decode path (1,000 cases here, 20,000 in the slow suite)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.errors import InvalidImage, PFViTError
from service.vision.imaging import decode_image, decode_picture, probe_size
from tests.conftest import ASTRONAUT, wait_ready
from tools import hostile_corpus as hc

PROBLEM = "application/problem+json"
LIMIT = 40_000_000


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


def _status_of(data: bytes) -> int:
    try:
        decode_picture(data, max_pixels=LIMIT, max_side=1280)
    except PFViTError as exc:
        return exc.status
    return 200


def _assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    return resp.json()


def test_named_hostile_files_get_their_status_through_the_api(client, photo, astronaut_bytes):
    for name, (data, status) in hc.named_files(photo).items():
        multipart = client.post("/v1/recognize", files={"images": (name, data, "application/octet-stream")})
        assert _assert_problem(multipart, status)["image_index"] == 0, name
        as_json = client.post("/v1/poker-face", json={"images": [{"data": base64.b64encode(data).decode()}]})
        _assert_problem(as_json, status)
    assert client.post("/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code == 200


def test_dds_is_refused_as_unsupported_before_pillow_opens_it(client):
    body = _assert_problem(
        client.post("/v1/recognize", files={"images": ("min.dds", hc.dds_minimal(), "image/x-dds")}), 415
    )
    assert body["format"] == "DDS" and body["type"].endswith("/unsupported-media-type")


def test_half_jpeg_with_end_marker_and_corrupt_png_are_invalid(photo):
    for data in (hc.jpeg_half_with_end_marker(photo), hc.png_short_image_data(photo), hc.png_corrupt_image_data(photo)):
        with pytest.raises(InvalidImage):
            decode_image(data, max_pixels=LIMIT)


def test_whole_jpegs_decode_to_the_same_pixels_as_before(photo):
    """A JPEG is handed to the decoder without its end marker: a whole file must decode
    exactly as Pillow decodes it as sent, at full size and DCT-reduced."""
    jpegs = [seed.data for seed in hc.seeds() if seed.name.startswith("jpeg")]
    jpegs.append(hc.encode(photo, "JPEG", quality=75, exif=_exif_bytes()))
    jpegs.append(hc.encode(photo, "MPO", save_all=True, append_images=[photo.rotate(90)]))
    for data in jpegs:
        assert np.array_equal(
            decode_image(data, max_pixels=LIMIT), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        )
    big = hc.encode(photo.resize((2048, 2048)), "JPEG", quality=90)
    reduced = decode_picture(big, max_pixels=LIMIT, max_side=600)
    pil = Image.open(io.BytesIO(big))
    pil.draft("RGB", (600, 600))
    expected = pil.convert("RGB").resize(reduced.pixels.shape[1::-1], Image.Resampling.BOX)
    assert reduced.width == 2048 and np.array_equal(np.asarray(expected), reduced.pixels)


def _exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "a description"  # ImageDescription: an APP1 segment before the frame
    return exif.tobytes()


@pytest.mark.parametrize(
    "build", [hc.jpeg_comment_flood, hc.png_chunk_flood], ids=["jpeg-5M-comments", "png-950k-chunks"]
)
def test_pathological_structure_is_refused_fast(build):
    data = build()
    for check in (lambda: probe_size(data, max_pixels=LIMIT), lambda: decode_image(data, max_pixels=LIMIT)):
        start = time.perf_counter()
        with pytest.raises(InvalidImage, match="more than"):
            check()
        assert time.perf_counter() - start < 0.5


def _fuzz(cases: int) -> None:
    statuses: dict[int, int] = {}
    for name, data in hc.mutation_corpus(cases):
        start = time.perf_counter()
        try:
            decode_picture(data, max_pixels=LIMIT, max_side=1280)
            status = 200
        except PFViTError as exc:  # anything else is a 500 in the service: the test fails on it
            status = exc.status
        elapsed = time.perf_counter() - start
        assert 200 <= status < 500, (name, status)
        assert elapsed < 2.0, (name, elapsed)
        statuses[status] = statuses.get(status, 0) + 1
    # The corpus exercises both outcomes: files that still decode and files refused.
    assert statuses.get(200, 0) > cases // 20 and statuses.get(422, 0) > cases // 4, statuses


def test_mutation_smoke(client):
    _fuzz(1000)
    # A slice of the same corpus through the app: no 5xx, every refusal a problem document.
    for name, data in hc.mutation_corpus(60, seed=27):
        resp = client.post("/v1/recognize", files={"images": (name, data, "application/octet-stream")})
        assert resp.status_code < 500, (name, resp.text)
        if resp.status_code >= 400:
            assert resp.headers["content-type"].startswith(PROBLEM), name


@pytest.mark.slow
def test_mutation_fuzz():
    _fuzz(20_000)


# --- bounded validation ----------------------------------------------------------------------


def test_a_million_empty_items_get_a_small_422_at_once(client):
    body = b'{"images": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    start = time.perf_counter()
    resp = client.post("/v1/recognize", content=body, headers={"Content-Type": "application/json"})
    assert time.perf_counter() - start < 1.0
    problem = _assert_problem(resp, 422)
    assert len(resp.content) < 64 * 1024 and problem["type"].endswith("/validation-error")


def test_images_over_max_images_is_one_error_checked_before_the_items(client, settings):
    too_many = {"images": [{"nonsense": i} for i in range(settings.max_images + 1)]}
    problem = _assert_problem(client.post("/v1/recognize", json=too_many), 422)
    assert problem["errors"] == [
        {
            "loc": ["body", "images"],
            "msg": f"List should have at most {settings.max_images} items, not {settings.max_images + 1}",
            "type": "too_long",
        }
    ]
    assert problem["error_count"] == 1


def test_a_problem_document_lists_at_most_twenty_errors(client, settings):
    # Each image wrong twice (no data, an unknown field): more errors than are listed.
    body = {"images": [{"filename": "x" * 300, "colour": "blue"} for _ in range(settings.max_images)]}
    problem = _assert_problem(client.post("/v1/recognize", json=body), 422)
    assert len(problem["errors"]) == 20 and problem["error_count"] == 3 * settings.max_images
    assert "more" in problem["detail"] and len(problem["detail"]) < 1000


def test_openapi_bounds_json_images(client, settings):
    spec = client.get("/openapi.json").json()
    for name in ("JsonRecognizeRequest", "JsonPokerFaceRequest"):
        assert spec["components"]["schemas"][name]["properties"]["images"]["maxItems"] == settings.max_images
    assert "error_count" in spec["components"]["schemas"]["Problem"]["properties"]


# --- small ones ------------------------------------------------------------------------------


def test_trailing_slash_is_not_found_and_never_redirected(client):
    resp = client.post("/v1/recognize/", headers={"Host": "evil.example"}, follow_redirects=False)
    _assert_problem(resp, 404)
    assert "location" not in resp.headers


def test_docs_need_a_key_only_when_configured(settings):
    keyed = settings.model_copy(update={"api_keys": ["k1"]})
    with TestClient(create_app(keyed)) as open_docs:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert open_docs.get(path).status_code == 200, path
    with TestClient(create_app(keyed.model_copy(update={"docs_require_key": True}))) as closed:
        for path in ("/docs", "/openapi.json", "/redoc", "/docs-assets/swagger-ui.css"):
            _assert_problem(closed.get(path), 401)
        assert closed.get("/openapi.json", headers={"X-API-Key": "k1"}).status_code == 200
        wait_ready(closed)
        assert closed.get("/healthz").status_code == 200
