"""The Python client and `pfvit-recognize` against the real service on loopback (shipped model),
with a folder holding a corrupt file and a short video made here from rendered faces."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import DEFAULT_EMOTION_MODEL
from tests.conftest import ASTRONAUT, DEFAULT_LABELS, REPO
from tests.images import write_rendered_video
from tools.loopback import serving

pytestmark = pytest.mark.slow

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[client]')")

from pfvit_client import AsyncPFViTClient, ImageResult, PFViTClient  # noqa: E402
from pfvit_client.client import retry_after_s  # noqa: E402

REF_BOX = np.array([181.1, 62.2, 267.7, 172.1])
MAX_IMAGES = 3  # small, so that a handful of inputs needs several requests
CLI_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def server():
    with serving(
        {
            "PFVIT_PROVIDERS": "cpu",
            "PFVIT_INTRA_OP_THREADS": "1",
            "PFVIT_WARMUP_RUNS": "1",
            "PFVIT_MAX_IMAGES": str(MAX_IMAGES),
        }
    ) as url:
        yield url


def box_of(result: ImageResult) -> np.ndarray:
    b = result.faces[0].box
    return np.array([b.x1, b.y1, b.x2, b.y2])


def png_shape(data: bytes) -> tuple[int, ...]:
    return np.asarray(Image.open(io.BytesIO(data))).shape


def test_client_reads_the_limits_and_gives_typed_results(server, astronaut_rgb):
    with PFViTClient(server) as client:
        assert client.limits().max_images == MAX_IMAGES
        results = client.recognize(
            [ASTRONAUT, astronaut_rgb, ASTRONAUT.read_bytes(), astronaut_rgb],
            poker_face=True,
            expression_map=True,
            aligned_face=True,
        )
    assert [r.index for r in results] == [0, 1, 2, 3]  # 4 inputs in 2 requests, in input order
    assert [r.source for r in results] == [str(ASTRONAUT), "array[1]", "bytes[2]", "array[3]"]
    for result in results:
        assert result.ok and result.model.name == DEFAULT_EMOTION_MODEL and len(result.faces) == 1
        assert np.abs(box_of(result) - REF_BOX).max() < 2.5  # the detector follows facenet to ~2 px
        face = result.faces[0]
        assert face.label == "happiness" and face.label == max(face.probabilities, key=face.probabilities.get)
        assert len(face.logits) == len(result.labels) == len(DEFAULT_LABELS)
        for png in (face.poker_face_png, face.expression_map_png, face.aligned_face_png):
            assert png_shape(png) == (48, 48, 3)


def test_async_client_carries_on_past_a_bad_input(server, astronaut_rgb):
    inputs = [
        ASTRONAUT,
        b"this is not a picture",
        astronaut_rgb,
        ASTRONAUT,
        Path("/no/such/file.png"),
        astronaut_rgb,
        ASTRONAUT,
    ]

    async def go() -> list[ImageResult]:
        async with AsyncPFViTClient(server, concurrency=2) as client:
            return await client.recognize(inputs)

    results = asyncio.run(go())
    assert [r.index for r in results] == list(range(len(inputs)))
    assert [r.ok for r in results] == [True, False, True, True, False, True, True]
    assert results[1].error.status == 422 and "invalid-image" in results[1].error.type
    assert results[4].error.status == 0 and "No such file" in results[4].error.detail  # refused before sending
    assert all(len(r.faces) == 1 for r in results if r.ok)


def test_client_retries_503_after_the_time_the_service_asks():
    calls: list[float] = []
    body = {
        "model": {"name": "m", "version": "1", "provider": "CPUExecutionProvider"},
        "labels": ["a"],
        "timings_ms": {},
        "images": [{"index": 0, "filename": "x", "width": 4, "height": 4, "faces": []}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/limits":
            return httpx.Response(404)
        calls.append(time.monotonic())
        if len(calls) < 3:
            return httpx.Response(
                503, headers={"Retry-After": "0.3"}, json={"title": "Models are not loaded yet", "status": 503}
            )
        return httpx.Response(200, json=body)

    with PFViTClient("http://service.test", transport=httpx.MockTransport(handler)) as client:
        (result,) = client.recognize([b"x"])
    assert result.ok and result.faces == ()
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.29 and calls[2] - calls[1] >= 0.29
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "120"}), cap_s=30) == 30
    assert retry_after_s(httpx.Response(503)) == 1.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pfvit_client", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_cli_walks_a_folder_and_reports_the_corrupt_file(server, tmp_path, astronaut_rgb):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "astronaut.png").write_bytes(ASTRONAUT.read_bytes())
    Image.fromarray(astronaut_rgb).save(photos / "sub" / "again.jpg", quality=92)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(photos / "blank.webp")
    (photos / "broken.jpg").write_bytes(ASTRONAUT.read_bytes()[:3000])  # truncated
    (photos / "notes.txt").write_text("not a photo: never sent")
    out = tmp_path / "faces.csv"
    proc = run_cli(
        str(photos),
        "--url",
        server,
        "--csv",
        str(out),
        "--poker-face",
        str(tmp_path / "poker"),
        "--expression-map",
        str(tmp_path / "maps"),
        "--concurrency",
        "2",
    )
    assert proc.returncode == 1, proc.stderr  # one input failed
    assert "3 image(s) and 0 video frame(s) analysed, 2 face(s); 1 input(s) could not be analysed" in proc.stderr
    assert "broken.jpg: Invalid image" in proc.stderr and "notes.txt" not in proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["source"]).name for r in rows) == ["again.jpg", "astronaut.png", "blank.webp"]
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["blank.webp"]["face"] == "" and by_name["astronaut.png"]["label"] == "happiness"
    assert list(rows[0])[-len(DEFAULT_LABELS) :] == DEFAULT_LABELS
    assert abs(sum(float(by_name["again.jpg"][label]) for label in DEFAULT_LABELS) - 1.0) < 1e-3
    assert sorted(p.name for p in (tmp_path / "poker").iterdir()) == [
        "photos__astronaut.face0.poker.png",
        "photos__sub__again.face0.poker.png",
    ]
    assert len(list((tmp_path / "maps").glob("*.map.png"))) == 2


def test_cli_on_a_rendered_video(server, tmp_path):
    clip = tmp_path / "clip.mp4"
    centres = write_rendered_video(clip)
    out = tmp_path / "clip.jsonl"
    proc = run_cli(
        str(clip), "--url", server, "--every", "3", "--jsonl", str(out), "--annotate", str(tmp_path / "annotated")
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 3, 6, 9]  # one face per sampled frame
    assert [r["time_s"] for r in rows] == [0.0, 0.75, 1.5, 2.25]
    for row in rows:
        cx, cy = centres[row["frame"]]
        assert row["face"] == 0 and row["x1"] < cx < row["x2"] and row["y1"] < cy < row["y2"], row
        assert abs(sum(row["probabilities"].values()) - 1.0) < 1e-3
    (annotated,) = (tmp_path / "annotated").iterdir()
    assert annotated.name == "clip.annotated.mp4"
    with av.open(str(annotated)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 12

    # The box colour is drawn on every frame (held between samples), never on the source.
    def box_pixels(img: np.ndarray) -> int:
        return int(((img[..., 0] > 200) & (img[..., 1] > 150) & (img[..., 1] < 230) & (img[..., 2] < 80)).sum())

    assert all(box_pixels(f) > 100 for f in frames)

    proc = run_cli(str(clip), "--url", server, "--fps", "2", "--jsonl", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["time_s"] for line in out.read_text().splitlines()] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_cli_reports_an_unreachable_service_and_missing_paths(tmp_path):
    proc = run_cli(str(ASTRONAUT), str(tmp_path / "missing.png"), "--url", "http://127.0.0.1:9", "--timeout", "5")
    assert proc.returncode == 1
    assert (
        "cannot reach the service at http://127.0.0.1:9" in proc.stderr
        and "missing.png: no such file or folder" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    usage = run_cli(str(ASTRONAUT), "--every", "0")
    assert usage.returncode == 2 and "--every must be at least 1" in usage.stderr


def test_client_needs_neither_service_nor_torch():
    code = (
        "import sys, pfvit_client, pfvit_client.cli, pfvit_client.video;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'training', 'torch'));"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_console_script_is_declared():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pfvit-recognize"] == "pfvit_client.cli:main"
    assert {"httpx", "av", "tqdm"} <= {
        r.split(">")[0].split("=")[0] for r in project["optional-dependencies"]["client"]
    }


def test_client_splits_what_the_service_refuses_as_a_whole():
    """Chunks fit the advertised limits; a chunk refused without naming an image goes again one by one."""
    sizes: list[int] = []
    body = {
        "model": {"name": "m", "version": "1", "provider": "CPUExecutionProvider"},
        "labels": ["a"],
        "timings_ms": {},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/limits":
            return httpx.Response(200, json={"max_images": 4, "max_upload_bytes": 6000})
        n = request.content.count(b'name="images"')
        sizes.append(n)
        if n > 1:
            return httpx.Response(400, json={"title": "Refused", "status": 400, "detail": "something about the batch"})
        if b"BAD" in request.content:
            return httpx.Response(415, json={"title": "Unsupported image format", "status": 415, "detail": "GIF"})
        return httpx.Response(
            200, json={**body, "images": [{"index": 0, "filename": "x", "width": 4, "height": 4, "faces": []}]}
        )

    inputs = [b"a" * 1000, b"BAD" + b"b" * 1000, b"c" * 1000, b"d" * 10_000, b"e" * 1000]
    with PFViTClient("http://service.test", transport=httpx.MockTransport(handler)) as client:
        results = client.recognize(inputs)
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert results[1].error.status == 415 and results[3].error.status == 413 and "6000" in results[3].error.detail
    # 3 inputs fit 6000 bytes with their multipart overhead; refused whole, they go one by one;
    # the 10 kB one is never sent; the last goes alone.
    assert sizes == [3, 1, 1, 1, 1]


def test_client_stops_on_answers_about_the_service_itself():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"title": "Not found", "status": 404, "detail": "no such route"})

    from pfvit_client import ServiceError

    with PFViTClient("http://service.test", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ServiceError, match="404"):
            client.recognize([b"a", b"b"])


def test_client_acts_on_the_problem_type_not_its_prose():
    """What the client does with a refusal follows the problem's type and members, whatever the
    wording of its detail."""
    base = "https://pfvit.dev/problems/"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/limits":
            return httpx.Response(200, json={"max_images": 4, "max_upload_bytes": 60_000})
        if request.url.params.get("max_faces") == "3":
            return httpx.Response(
                422, json={"type": base + "validation-error", "title": "Invalid", "status": 422, "detail": "anything"}
            )
        if b"BAD" in request.content:
            problem = {
                "type": base + "invalid-image",
                "title": "Invalid image",
                "status": 422,
                "detail": "worded any way at all, naming position 1",
                "image_index": 1,
                "image_detail": "image data is truncated or corrupt",
            }
            return httpx.Response(422, json=problem)
        images = [{"index": i, "filename": "x", "width": 4, "height": 4, "faces": []} for i in range(2)]
        return httpx.Response(200, json={"model": {"name": "m", "version": "1", "provider": "CPU"}, "labels": ["a"],
                                         "timings_ms": {}, "images": images})  # fmt: skip

    from pfvit_client import ServiceError

    with PFViTClient("http://service.test", transport=httpx.MockTransport(handler)) as client:
        good, bad, after = client.recognize([b"a" * 10, b"BAD", b"c" * 10])
        assert good.ok and after.ok and not bad.ok
        assert bad.error.slug == "invalid-image" and bad.error.detail == "image data is truncated or corrupt"
        # An invalid option is about the request, not one image: sending the images alone cannot help.
        with pytest.raises(ServiceError, match="422"):
            client.recognize([b"a", b"b"], max_faces=3)
