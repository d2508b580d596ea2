"""The HTTP API on the real fixture photo, real ONNX Runtime sessions and the shipped MTCNN."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.vision.align import align_face
from service.vision.imaging import resize_rgb
from tests.images import encode, png_bomb, with_exif_orientation
from tests.prometheus_text import sample_value
from tools.stub_model import LABELS, expected_logits

REF_BOX = np.array([181.1, 62.2, 267.7, 172.1])
REF_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
PROBLEM = "application/problem+json"


def upload(*items):
    return [("images", item) for item in items]


def png_face(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def assert_problem(resp, status: int, slug: str | None = None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    if slug:
        assert body["type"].endswith("/" + slug), body
    return body


def assert_still_serving(client, astronaut_bytes):
    assert client.get("/readyz").status_code == 200
    ok = client.post("/v1/recognize", files=upload(("a.png", astronaut_bytes, "image/png")))
    assert ok.status_code == 200 and len(ok.json()["images"][0]["faces"]) == 1


def test_recognize_astronaut_matches_reference(client, astronaut_bytes, astronaut_rgb):
    resp = client.post("/v1/recognize", files=upload(("astronaut.png", astronaut_bytes, "image/png")))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {"name": "stub-emotion", "version": "0.0.1-test", "provider": "CPUExecutionProvider"}
    assert body["labels"] == LABELS
    (image,) = body["images"]
    assert (image["width"], image["height"], image["filename"]) == (512, 512, "astronaut.png")
    (face,) = image["faces"]
    box = np.array([face["box"][k] for k in ("x1", "y1", "x2", "y2")])
    assert np.abs(box - REF_BOX).max() < 2.5  # the detector follows facenet to ~2 px (tests/test_mtcnn.py)
    assert np.abs(np.array(face["landmarks"]) - REF_LANDMARKS).max() < 2.0
    assert face["score"] > 0.99
    # Probabilities are the softmax of the logits, the label their argmax, in card order.
    logits = np.array(face["logits"])
    probs = np.array([face["probabilities"][label] for label in LABELS])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(probs, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), atol=1e-5)
    assert face["label"] == LABELS[int(np.argmax(logits))]
    # The logits are those of the aligned crop of the detected face.
    aligned, _ = align_face(astronaut_rgb, np.array(face["landmarks"]), 112)
    assert np.allclose(logits, expected_logits(aligned[None])[0], atol=2e-3)
    assert face["poker_face_png"] is None
    assert set(body["timings_ms"]) >= {"decode", "detect", "align", "infer", "total"}


def test_recognize_aligned_upload_skips_detection(client, astronaut_rgb):
    crop = resize_rgb(astronaut_rgb[60:180, 170:280], (112, 112))
    resp = client.post(
        "/v1/recognize",
        params={"aligned": "true", "return_poker_face": "true"},
        files=upload(("c.png", encode(crop, "PNG"), "image/png")),
    )
    assert resp.status_code == 200, resp.text
    (face,) = resp.json()["images"][0]["faces"]
    assert face["score"] is None and face["landmarks"] is None
    assert face["box"] == {"x1": 0.0, "y1": 0.0, "x2": 112.0, "y2": 112.0}
    assert np.allclose(face["logits"], expected_logits(crop[None])[0], atol=1e-4)
    # The stub's poker face is the de-normalised input: the PNG must give the crop back.
    assert np.abs(png_face(face["poker_face_png"]).astype(int) - crop).max() <= 1
    assert "detect" not in resp.json()["timings_ms"]


@pytest.mark.parametrize("size", [(112, 120), (300, 200)])
def test_an_aligned_upload_that_is_not_square_is_refused_not_stretched(client, astronaut_rgb, astronaut_bytes, size):
    w, h = size
    crop = resize_rgb(astronaut_rgb[60:180, 170:280], (w, h))
    side = min(w, h)
    square = encode(crop[:side, :side], "PNG")
    files = upload(("square.png", square, "image/png"), ("c.png", encode(crop, "PNG"), "image/png"))
    resp = client.post("/v1/recognize", params={"aligned": "true"}, files=files)
    problem = assert_problem(resp, 422, "not-square")
    assert problem["image_index"] == 1
    assert f"{w}x{h}" in problem["detail"] and "square" in problem["detail"]
    # Without aligned=true the same image is searched for faces, as any photo is.
    assert client.post("/v1/recognize", files=files[1:]).status_code == 200
    assert_still_serving(client, astronaut_bytes)


def test_several_images_one_batch(client, astronaut_bytes, astronaut_rgb):
    blank = encode(np.full((200, 300, 3), 200, np.uint8), "JPEG")
    before = _batch_count(client)
    resp = client.post(
        "/v1/recognize",
        files=upload(
            ("a.png", astronaut_bytes, "image/png"),
            ("blank.jpg", blank, "image/jpeg"),
            ("flip.png", encode(astronaut_rgb[:, ::-1].copy(), "PNG"), "image/png"),
        ),
    )
    assert resp.status_code == 200, resp.text
    images = resp.json()["images"]
    assert [len(i["faces"]) for i in images] == [1, 0, 1]  # no face: 200 with an empty list
    assert [i["index"] for i in images] == [0, 1, 2]
    mirrored_x1 = 512 - images[2]["faces"][0]["box"]["x2"]
    assert (
        abs(mirrored_x1 - images[0]["faces"][0]["box"]["x1"]) < 5
    )  # the cascade is not exactly mirror-symmetric (measured 4.1 px)
    assert _batch_count(client) == before + 1  # both faces went through the model in one call


def _batch_count(client) -> float:
    return sample_value(client.get("/metrics").text, "pfvit_inference_batch_size_count", graph="recognition")


def test_exif_rotated_upload_finds_the_same_face(client, astronaut_rgb):
    resp = client.post("/v1/recognize", files=upload(("r.jpg", with_exif_orientation(astronaut_rgb, 6), "image/jpeg")))
    assert resp.status_code == 200
    image = resp.json()["images"][0]
    assert (image["width"], image["height"]) == (512, 512)
    box = np.array([image["faces"][0]["box"][k] for k in ("x1", "y1", "x2", "y2")])
    assert np.abs(box - REF_BOX).max() < 4.0


def test_options_are_honoured(client, astronaut_bytes):
    too_big_min = client.post(
        "/v1/recognize", params={"min_face_size": 120}, files=upload(("a.png", astronaut_bytes, "image/png"))
    )
    assert too_big_min.status_code == 200 and too_big_min.json()["images"][0]["faces"] == []
    strict = client.post(
        "/v1/recognize", params={"threshold": 0.9999999}, files=upload(("a.png", astronaut_bytes, "image/png"))
    )
    assert strict.status_code == 200 and strict.json()["images"][0]["faces"] == []


def test_poker_face_json_and_png(client, astronaut_bytes):
    resp = client.post("/v1/poker-face", files=upload(("a.png", astronaut_bytes, "image/png")))
    assert resp.status_code == 200, resp.text
    (face,) = resp.json()["images"][0]["faces"]
    assert png_face(face["poker_face_png"]).shape == (112, 112, 3)
    png = client.post(
        "/v1/poker-face", headers={"Accept": "image/png"}, files=upload(("a.png", astronaut_bytes, "image/png"))
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), png_face(face["poker_face_png"])
    )


def test_poker_face_png_needs_one_image_with_a_face(client, astronaut_bytes):
    blank = encode(np.full((120, 120, 3), 30, np.uint8), "PNG")
    assert_problem(
        client.post("/v1/poker-face", headers={"Accept": "image/png"}, files=upload(("b.png", blank, "image/png"))),
        422,
        "no-face-found",
    )
    two = upload(("a.png", astronaut_bytes, "image/png"), ("b.png", blank, "image/png"))
    assert_problem(client.post("/v1/poker-face", headers={"Accept": "image/png"}, files=two), 400, "invalid-request")
    assert_problem(
        client.post(
            "/v1/poker-face", headers={"Accept": "text/html"}, files=upload(("a.png", astronaut_bytes, "image/png"))
        ),
        406,
        "not-acceptable",
    )


BAD_UPLOADS = {
    "empty-file": (upload(("e.png", b"", "image/png")), 400, "empty-upload"),
    "not-an-image": (upload(("x.jpg", b"<html>hello</html>" * 20, "image/jpeg")), 422, "invalid-image"),
    "gif": (
        upload(("x.gif", encode(np.zeros((16, 16, 3), np.uint8), "GIF"), "image/gif")),
        415,
        "unsupported-media-type",
    ),
    "bomb": (upload(("bomb.png", png_bomb(), "image/png")), 413, "image-too-large"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_problem_documents(client, astronaut_bytes, case):
    files, status, slug = BAD_UPLOADS[case]
    for route in ("/v1/recognize", "/v1/poker-face"):
        assert_problem(client.post(route, files=files), status, slug)
    assert_still_serving(client, astronaut_bytes)


def test_truncated_jpeg(client, astronaut_rgb, astronaut_bytes):
    data = encode(astronaut_rgb, "JPEG", quality=90)
    resp = client.post(
        "/v1/recognize",
        files=upload(("ok.png", astronaut_bytes, "image/png"), ("cut.jpg", data[: len(data) // 3], "image/jpeg")),
    )
    assert_problem(resp, 422, "invalid-image")
    problem = resp.json()
    assert problem["image_index"] == 1 and "cut.jpg" in problem["detail"]
    # The fault alone, for clients that name the image themselves; the detail is it, prefixed.
    assert "cut.jpg" not in problem["image_detail"] and problem["detail"].endswith(problem["image_detail"])
    assert_still_serving(client, astronaut_bytes)


def test_bomb_is_small(client):
    assert len(png_bomb()) < 8192


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no body at all
        {"files": {"images": (None, b"not a file")}},  # a text field of that name
        {"files": [("image", ("a.png", b"x", "image/png"))]},  # misnamed field
    ],
    ids=["no-body", "text-field", "misnamed-field"],
)
@pytest.mark.parametrize("route", ["/v1/recognize", "/v1/poker-face"])
def test_missing_or_misnamed_field(client, astronaut_bytes, route, kwargs):
    resp = client.post(route, **kwargs)
    assert_problem(resp, 422, "validation-error")
    assert ["body", "images"] in [e["loc"][:2] for e in resp.json()["errors"]]  # names the field
    assert_still_serving(client, astronaut_bytes)


@pytest.mark.parametrize(
    "params",
    [
        {"max_faces": 0},
        {"max_faces": "many"},
        {"max_faces": 5000},  # over the service's max_faces_limit (a setting, not the schema)
        {"threshold": 1.5},
        {"min_face_size": 2},
        {"aligned": "perhaps"},
    ],
    ids=["max_faces-0", "max_faces-text", "max_faces-over-limit", "threshold", "min_face_size", "aligned"],
)
@pytest.mark.parametrize("route", ["/v1/recognize", "/v1/poker-face"])
def test_invalid_options(client, astronaut_bytes, route, params):
    # Every invalid option is the same 422 problem, naming the option in `errors`.
    resp = client.post(route, params=params, files=upload(("a.png", astronaut_bytes, "image/png")))
    assert_problem(resp, 422, "validation-error")
    (option,) = params
    assert [e["loc"] for e in resp.json()["errors"]] == [["query", option]]
    assert_still_serving(client, astronaut_bytes)


def test_too_many_images(client, settings):
    tiny = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    for count in (settings.max_images + 1, 10 * settings.max_images):
        files = upload(*[(f"{i}.png", tiny, "image/png") for i in range(count)])
        problem = assert_problem(client.post("/v1/recognize", files=files), 400, "invalid-request")
        assert problem["detail"] == f"{count} images uploaded; at most {settings.max_images} per request"
        assert problem["field"] == "images"
    # Text fields beside the files are not images.
    files = upload(*[(f"{i}.png", tiny, "image/png") for i in range(settings.max_images)])
    resp = client.post("/v1/recognize", files=files, data={"note": "filename=x.png"})
    assert resp.status_code == 200 and len(resp.json()["images"]) == settings.max_images


@pytest.mark.parametrize("media", ["image/png", "image/jpeg", "application/octet-stream"])
@pytest.mark.parametrize("route", ["/v1/recognize", "/v1/poker-face"])
def test_one_raw_image_body_is_one_upload(client, astronaut_bytes, route, media):
    """The body itself as the image (its type from its bytes, as for an upload); options in the query."""
    raw = client.post(route, params={"max_faces": 1}, content=astronaut_bytes, headers={"Content-Type": media})
    assert raw.status_code == 200, raw.text
    form = client.post(route, params={"max_faces": 1}, files=upload(("a.png", astronaut_bytes, "image/png")))
    raw_images, form_images = raw.json()["images"], form.json()["images"]
    assert [len(i["faces"]) for i in raw_images] == [len(i["faces"]) for i in form_images] == [1]
    assert raw_images[0]["filename"] is None
    assert raw_images[0]["faces"][0]["box"] == form_images[0]["faces"][0]["box"]


def test_a_raw_body_meets_the_uploads_checks(client, astronaut_bytes):
    headers = {"Content-Type": "image/jpeg"}
    assert_problem(client.post("/v1/recognize", content=b"raw bytes", headers=headers), 422, "invalid-image")
    assert_problem(client.post("/v1/recognize", content=b"", headers=headers), 400, "empty-upload")
    gif = encode(np.zeros((8, 8, 3), np.uint8), "GIF")
    assert_problem(client.post("/v1/recognize", content=gif, headers={"Content-Type": "image/gif"}), 415)
    assert_still_serving(client, astronaut_bytes)


@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_another_body_type_is_a_415_that_names_the_forms(client, astronaut_bytes, media):
    resp = client.post("/v1/recognize", content=astronaut_bytes, headers={"Content-Type": media})
    problem = assert_problem(resp, 415, "unsupported-media-type")
    assert media in problem["detail"]
    for form in ("multipart/form-data", "application/json", "image/jpeg"):
        assert form in problem["detail"]


def test_unknown_route_and_method(client):
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(client.get("/v1/recognize"), 405, "method-not-allowed")


def test_models_health_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").json()["status"] == "ready"
    models = client.get("/v1/models").json()
    assert models["ready"] is True
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name["stub-emotion"]["labels"] == LABELS
    assert set(by_name["stub-emotion"]["graphs"]) == {"recognition", "poker_face"}
    assert by_name["stub-emotion"]["graphs"]["recognition"]["providers"] == ["CPUExecutionProvider"]
    assert set(by_name["mtcnn"]["graphs"]) == {"pnet", "rnet", "onet"}
    text = client.get("/metrics").text
    assert (
        'pfvit_model_info{kind="emotion",model="stub-emotion",provider="CPUExecutionProvider",version="0.0.1-test"} 1.0'
        in text
    )
    # pfvit_ready is one gauge per process, and other tests start apps of their own in this one:
    # test_readiness and test_e2e check it where a single app owns it.


def test_metric_labels_are_bounded(client):
    def unmatched(text: str) -> float:
        return sample_value(text, "pfvit_http_requests_total", method="GET", route="unmatched", status="404")

    before = client.get("/metrics").text
    for i in range(5):
        client.get(f"/no/such/path/{i}")
    text = client.get("/metrics").text
    assert "/no/such/path" not in text
    assert unmatched(text) - unmatched(before) == 5


def test_openapi_documents_both_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/recognize", "/v1/poker-face", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "curl" in spec["paths"]["/v1/recognize"]["post"]["description"]
    assert client.get("/docs").status_code == 200
