"""The demo page's files and the API options it relies on: aligned faces, expression maps, limits."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.api.routes.ui import STATIC_DIR
from tests.conftest import wait_ready


def upload(data: bytes, name: str = "a.png"):
    return [("images", (name, data, "image/png"))]


def png_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_page_is_served_with_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="photos"' in page.text and "/ui/app.js" in page.text
    for path, kind in (("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
        resp = client.get(path)
        assert resp.status_code == 200 and kind in resp.headers["content-type"], path
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not part of the API


def test_page_loads_nothing_from_elsewhere():
    """Air-gapped use: every file the page names is on this service (or inline data)."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"url\(([^)]*)\)", text):
            assert ref.startswith(("/", "#", "data:")), f"{path.name} loads {ref}"
        assert not re.search(r"https?://(?!pfvit\.dev/problems)", text), f"{path.name} names an outside address"


def test_page_can_be_switched_off(settings):
    from service.app import create_app

    with TestClient(create_app(settings.model_copy(update={"ui_enabled": False}))) as off:
        wait_ready(off)
        assert off.get("/").status_code == 404
        assert off.get("/ui/app.js").status_code == 404
        assert off.get("/v1/limits").status_code == 200  # the API itself is untouched


def test_limits_come_from_the_settings(client, settings):
    body = client.get("/v1/limits").json()
    assert body == {
        "max_images": settings.max_images,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_request_pixels": settings.max_request_pixels,
        "max_image_pixels": settings.max_image_pixels,
        "max_faces_limit": settings.max_faces_limit,
        "default_max_faces": settings.default_max_faces,
    }


def test_recognize_returns_aligned_face_and_expression_map(client, astronaut_bytes):
    plain = client.post("/v1/recognize", files=upload(astronaut_bytes)).json()["images"][0]["faces"][0]
    assert plain["expression_map_png"] is None and plain["aligned_face_png"] is None and plain["poker_face_png"] is None

    resp = client.post(
        "/v1/recognize",
        params={"return_expression_map": "true", "return_aligned_face": "true"},
        files=upload(astronaut_bytes),
    )
    assert resp.status_code == 200, resp.text
    face = resp.json()["images"][0]["faces"][0]
    assert face["poker_face_png"] is None  # asked for the map only
    aligned = png_rgb(base64.b64decode(face["aligned_face_png"]))
    heat = png_rgb(base64.b64decode(face["expression_map_png"]))
    assert aligned.shape == heat.shape == (112, 112, 3)  # the stub model's input size
    assert aligned.std() > 20  # a face, not a blank
    # The stub's poker face is the face itself: nothing differs, so the map leaves the face as it is.
    assert np.array_equal(heat, aligned)
    assert face["label"] == plain["label"] and face["logits"] == plain["logits"]


def test_poker_face_route_gives_expression_maps(client, astronaut_bytes):
    body = client.post("/v1/poker-face", params={"return_expression_map": "true"}, files=upload(astronaut_bytes)).json()
    face = body["images"][0]["faces"][0]
    assert face["poker_face_png"] and png_rgb(base64.b64decode(face["expression_map_png"])).shape == (112, 112, 3)
    assert (
        client.post("/v1/poker-face", files=upload(astronaut_bytes)).json()["images"][0]["faces"][0][
            "expression_map_png"
        ]
        is None
    )

    resp = client.post(
        "/v1/poker-face",
        params={"return_expression_map": "true"},
        headers={"Accept": "image/png"},
        files=upload(astronaut_bytes),
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert png_rgb(resp.content).shape == (112, 112, 3)
    assert np.array_equal(png_rgb(resp.content), png_rgb(base64.b64decode(face["expression_map_png"])))


def test_expression_map_needs_a_poker_face_graph(tmp_path, models_dir, astronaut_bytes):
    import shutil

    from service.app import create_app
    from service.config import Settings
    from tools.stub_model import write_stub_model

    shutil.copytree(models_dir / "mtcnn", tmp_path / "mtcnn")
    write_stub_model(tmp_path / "no-poker", name="no-poker", with_poker_face=False)
    settings = Settings(
        models_dir=tmp_path,
        emotion_model="no-poker",
        providers="cpu",
        intra_op_threads=1,
        warmup_runs=0,
        _env_file=None,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        resp = c.post("/v1/recognize", params={"return_expression_map": "true"}, files=upload(astronaut_bytes))
        assert resp.status_code == 501 and resp.json()["type"].endswith("/capability-missing")


def test_page_files_ship_in_the_service_package():
    """The wheel (and so the image) carries service/static through pyproject's package data."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from fnmatch import fnmatch

    root = STATIC_DIR.parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["service"]
    for path in STATIC_DIR.rglob("*"):
        rel = path.relative_to(STATIC_DIR.parent).as_posix()
        assert path.is_file() and any(fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel
