"""Bounds and access, in process: the request pixel budget, the deadline, API keys, CORS,
request IDs, base64 JSON input, and an OpenAPI document that says what the service does."""

import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app, keyed_routers
from tests.conftest import wait_ready
from tests.images import encode
from tests.prometheus_text import sample_value

PROBLEM = "application/problem+json"


def upload(*items):
    return [("images", item) for item in items]


def assert_problem(resp, status: int, slug: str):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["type"].endswith("/" + slug), body
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


@pytest.fixture(scope="module")
def guarded(settings):
    """Small pixel budget, API keys and one CORS origin."""
    tight = settings.model_copy(
        update={
            "max_request_pixels": 2 * 512 * 512 + 1,
            "api_keys": ["key-one", "key-two"],
            "cors_origins": ["https://app.example"],
        }
    )
    with TestClient(create_app(tight)) as c:
        wait_ready(c)
        yield c


KEY = {"X-API-Key": "key-one"}


def test_request_pixel_budget_counts_all_images(guarded, astronaut_bytes):
    two = upload(*[(f"{i}.png", astronaut_bytes, "image/png") for i in range(2)])
    assert guarded.post("/v1/recognize", files=two, headers=KEY).status_code == 200
    three = upload(*[(f"{i}.png", astronaut_bytes, "image/png") for i in range(3)])
    body = assert_problem(guarded.post("/v1/recognize", files=three, headers=KEY), 413, "image-too-large")
    assert "together" in body["detail"] and body["limit_pixels"] == 2 * 512 * 512 + 1


def test_deadline_answers_504_and_stops_the_work(settings, astronaut_rgb):
    # Eight 512 px images take well over a 0.25 s deadline on any CPU; each a distinct
    # picture so nothing is shared.
    small = [encode(np.roll(astronaut_rgb, i * 7, axis=1).copy(), "PNG") for i in range(8)]
    with TestClient(create_app(settings.model_copy(update={"request_timeout_s": 0.25}))) as c:
        wait_ready(c)
        before = sample_value(c.get("/metrics").text, "pfvit_requests_abandoned_total", reason="deadline")
        start = time.perf_counter()
        resp = c.post(
            "/v1/recognize",
            files=upload(*[(f"{i}.png", d, "image/png") for i, d in enumerate(small)]),
            params={"min_face_size": 12},
        )
        elapsed = time.perf_counter() - start
        assert_problem(resp, 504, "deadline-exceeded")
        assert elapsed < 5.0  # answered at the deadline, not when the work would have ended
        # The worker thread notices at its next stage and stops: counted as abandoned.
        for _ in range(200):
            if sample_value(c.get("/metrics").text, "pfvit_requests_abandoned_total", reason="deadline") > before:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the abandoned work was not stopped")
        assert c.get("/readyz").status_code == 200


def test_api_key_bearer_or_header(guarded, astronaut_bytes):
    files = upload(("a.png", astronaut_bytes, "image/png"))
    missing = guarded.post("/v1/recognize", files=files)
    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(guarded.post("/v1/recognize", files=files, headers={"X-API-Key": "nope"}), 401, "unauthorized")
    assert_problem(guarded.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    assert guarded.post("/v1/recognize", files=files, headers={"Authorization": "Bearer key-two"}).status_code == 200
    assert guarded.get("/v1/models", headers=KEY).status_code == 200
    # Health and metrics stay open for orchestrators and Prometheus.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert guarded.get(path).status_code == 200
    spec = guarded.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert (
        spec["paths"]["/v1/recognize"]["post"]["security"]
        and "401" in spec["paths"]["/v1/recognize"]["post"]["responses"]
    )
    assert "security" not in spec["paths"]["/healthz"]["get"]


@pytest.mark.parametrize("metrics_key", [False, True])
def test_key_protected_paths_come_from_the_routers(settings, metrics_key):
    """The routes the OpenAPI document marks as needing a key are those the middleware refuses
    without one before any route runs, and no other: both read the keyed routers."""
    keyed = settings.model_copy(update={"api_keys": ["key-one"], "metrics_require_key": metrics_key})
    with TestClient(create_app(keyed)) as c:
        spec = c.get("/openapi.json").json()
        marked = {path for path, ops in spec["paths"].items() if any(op.get("security") for op in ops.values())}
        assert marked == {"/v1/recognize", "/v1/poker-face", "/v1/models", "/v1/limits"} | (
            {"/metrics"} if metrics_key else set()
        )
        for path, operations in spec["paths"].items():
            for method in operations:
                keyless = c.request(method.upper(), path)
                assert (keyless.status_code == 401) == (path in marked), (method, path, keyless.status_code)
    assert keyed_routers(settings) == ()  # no keys, nothing to protect


def test_the_key_is_checked_before_the_body(guarded):
    # A keyless upload declaring more than the body limit: the key decides, not the body.
    huge = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10**9)}
    assert_problem(guarded.post("/v1/recognize", content=b"--x", headers=huge), 401, "unauthorized")
    assert_problem(
        guarded.post("/v1/recognize", content=b"--x", headers={**huge, "Authorization": "Bearer nope"}),
        401,
        "unauthorized",
    )
    assert_problem(guarded.post("/v1/recognize", content=b"--x", headers={**huge, **KEY}), 413, "payload-too-large")
    # The docs stay open by default (PFVIT_DOCS_REQUIRE_KEY).
    assert guarded.get("/openapi.json").status_code == 200


def test_cors_preflight_and_simple_request(guarded):
    pre = guarded.options(
        "/v1/recognize",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    other = guarded.options(
        "/v1/recognize", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers
    body = assert_problem(other, 400, "bad-request")
    assert "CORS" in body["detail"] and "origin" in body["detail"].lower()
    simple = guarded.get("/healthz", headers={"Origin": "https://app.example"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_no_cors_headers_by_default(client):
    resp = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in resp.headers


def test_request_id_is_echoed_or_generated(client):
    given = client.get("/v1/nothing", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b" and given.json()["request_id"] == "trace-42.a:b"
    made = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    # A value that could forge log fields is replaced, not echoed.
    odd = client.get("/healthz", headers={"X-Request-ID": 'a b"c'})
    assert odd.headers["x-request-id"] != 'a b"c' and len(odd.headers["x-request-id"]) == 32
    assert client.get("/healthz").headers["x-request-id"] != made.headers["x-request-id"]


def _json_body(data: bytes, **options) -> dict:
    return {"images": [{"data": base64.b64encode(data).decode(), "filename": "astronaut.png"}], **options}


def test_base64_json_input_gives_the_multipart_answer(client, astronaut_bytes):
    multipart = client.post(
        "/v1/recognize", files=upload(("astronaut.png", astronaut_bytes, "image/png")), params={"max_faces": 3}
    ).json()
    as_json = client.post("/v1/recognize", json=_json_body(astronaut_bytes, max_faces=3)).json()
    for body in (multipart, as_json):
        body.pop("timings_ms")
    assert as_json == multipart
    data_uri = "data:image/png;base64," + base64.b64encode(astronaut_bytes).decode()
    poker = client.post("/v1/poker-face", json={"images": [{"data": data_uri}]})
    assert poker.status_code == 200 and len(poker.json()["images"][0]["faces"]) == 1
    png = client.post("/v1/poker-face", json={"images": [{"data": data_uri}]}, headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    # Options in the body win over the query.
    none = client.post(
        "/v1/recognize", params={"min_face_size": 20}, json=_json_body(astronaut_bytes, min_face_size=300)
    )
    assert none.json()["images"][0]["faces"] == []


@pytest.mark.parametrize(
    "body, status, slug",
    [
        ({"images": []}, 422, "validation-error"),
        ({"images": [{"data": "not base64!"}]}, 422, "validation-error"),
        ({"images": [{"data": "https://example.com/face.jpg"}]}, 422, "validation-error"),
        ({"images": [{"data": "data:image/png,rawbytes"}]}, 422, "validation-error"),
        ({"images": [{"data": base64.b64encode(b"<html>").decode()}]}, 422, "invalid-image"),
        (
            {"images": [{"data": base64.b64encode(encode(np.zeros((8, 8, 3), np.uint8), "GIF")).decode()}]},
            415,
            "unsupported-media-type",
        ),
        ({"images": [{"data": "   "}]}, 400, "empty-upload"),
        ({"images": [{"data": "AAAA"}], "max_faces": 5000}, 422, "validation-error"),
        ({"images": [{"data": "AAAA"}], "colour": "blue"}, 422, "validation-error"),
    ],
    ids=[
        "empty-list",
        "bad-base64",
        "url",
        "data-uri-not-base64",
        "not-an-image",
        "gif",
        "blank",
        "max-faces-over-limit",
        "unknown-option",
    ],
)
def test_bad_json_input_gets_the_same_problem_types(client, astronaut_bytes, body, status, slug):
    for route in ("/v1/recognize", "/v1/poker-face"):
        assert_problem(client.post(route, json=body), status, slug)
    assert client.post("/v1/recognize", json=_json_body(astronaut_bytes)).status_code == 200


def test_json_limits_count_decoded_bytes(settings, astronaut_bytes):
    # The multipart body limit applies to the decoded images of a JSON body, not to its base64.
    limit = len(astronaut_bytes) + 1000
    with TestClient(create_app(settings.model_copy(update={"max_upload_bytes": limit}))) as c:
        wait_ready(c)
        assert c.post("/v1/recognize", json=_json_body(astronaut_bytes)).status_code == 200  # base64 is 4/3 larger
        two = {"images": _json_body(astronaut_bytes)["images"] * 2}
        assert_problem(c.post("/v1/recognize", json=two), 413, "payload-too-large")
        malformed = c.post("/v1/recognize", content=b'{"images": [', headers={"Content-Type": "application/json"})
        assert_problem(malformed, 422, "validation-error")


def test_metrics_method_label_is_bounded_and_process_metrics_exported(client):
    for i in range(20):
        client.request(f"BREW{i}", "/healthz")
    text = client.get("/metrics").text
    assert "BREW" not in text
    assert sample_value(text, "pfvit_http_requests_total", method="other", route="/healthz", status="405") >= 20
    assert sample_value(text, "process_resident_memory_bytes") > 0
    assert "pfvit_queue_depth" in text and "pfvit_queue_wait_seconds_bucket" in text


def test_queue_stage_in_timings(client, astronaut_bytes):
    timings = client.post("/v1/recognize", files=upload(("a.png", astronaut_bytes, "image/png"))).json()["timings_ms"]
    assert timings["queue"] >= 0 and timings["total"] >= timings["detect"]


def test_openapi_tells_the_truth(client, settings):
    spec = client.get("/openapi.json").json()
    ops = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert {op["operationId"] for op in ops.values()} >= {
        "recognize",
        "poker_face",
        "healthz",
        "readyz",
        "models",
        "prometheus_metrics",
    }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for (path, _method), op in ops.items():
        for status, response in op["responses"].items():
            if int(status) >= 400 and path != "/readyz":
                content = response["content"]
                assert list(content) == [PROBLEM], (path, status)
                assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    recognize, poker = ops[("/v1/recognize", "post")], ops[("/v1/poker-face", "post")]
    assert {"400", "413", "415", "422", "503", "504", "501"} <= set(recognize["responses"])
    assert {"406", "501"} <= set(poker["responses"])
    for op in (recognize, poker):
        body = op["requestBody"]["content"]
        images = body["multipart/form-data"]["schema"]["properties"]["images"]
        assert images["items"] == {"type": "string", "format": "binary"}  # a file picker in Swagger UI
        assert images["minItems"] == 1 and images["maxItems"] == settings.max_images
        json_schema = spec["components"]["schemas"][body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
        assert json_schema["properties"]["images"]["minItems"] == 1
        (max_faces,) = [p for p in op["parameters"] if p["name"] == "max_faces"]
        assert {"type": "integer", "minimum": 1, "maximum": settings.max_faces_limit}.items() <= max_faces["schema"][
            "anyOf"
        ][0].items()
        assert op["responses"]["200"]["content"]["application/json"]["example"]["images"]


def test_docs_are_served_without_a_network(client):
    page = client.get("/docs").text
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        resp = client.get(asset)
        assert resp.status_code == 200 and len(resp.content) > 10_000
        assert asset in page


def test_unhandled_error_is_a_problem_document(settings):
    def broken() -> None:
        raise RuntimeError("a bug with /secret/server/path")

    app = create_app(settings)
    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.get("/broken", headers={"X-Request-ID": "bug-1"})
    assert resp.status_code == 500 and resp.headers["content-type"].startswith(PROBLEM)
    assert resp.json()["request_id"] == "bug-1" and resp.headers["x-request-id"] == "bug-1"
    assert "/secret" not in resp.text


def test_missing_poker_face_graph_is_refused_before_any_detection(recognition_only_settings, astronaut_bytes):
    app = create_app(recognition_only_settings)
    files = {"images": ("a.png", astronaut_bytes, "image/png")}
    with TestClient(app) as c:
        wait_ready(c)
        before = sample_value(c.get("/metrics").text, "pfvit_stage_duration_seconds_count", stage="detect")
        assert_problem(
            c.post("/v1/recognize", params={"return_poker_face": "true"}, files=files), 501, "capability-missing"
        )
        assert_problem(
            c.post("/v1/recognize", json={"images": [{"data": "AAAA"}], "return_poker_face": True}),
            501,
            "capability-missing",
        )
        assert_problem(c.post("/v1/poker-face", files=files), 501, "capability-missing")
        assert sample_value(c.get("/metrics").text, "pfvit_stage_duration_seconds_count", stage="detect") == before


def test_models_are_hashed_once_per_start(settings, monkeypatch):
    import service.card

    hashed: list[str] = []
    original = service.card.sha256_file

    def counting(path, *args, **kwargs):
        hashed.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(service.card, "sha256_file", counting)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
    assert len(hashed) == len(set(hashed)) == 5  # three MTCNN graphs, two emotion graphs


@pytest.mark.parametrize(
    "accept, png",
    [
        (None, False),
        ("*/*", False),
        ("image/png", True),
        ("image/*", True),
        ("application/json;q=0.5, image/png", True),
        ("image/png;q=0.2, application/json", False),
        ("text/html", None),
        ("image/png;q=0", None),
        ("not a media type", None),
    ],
)
def test_accept_negotiation(accept, png):
    from service.api.routes.poker_face import wants_png
    from service.errors import NotAcceptable

    if png is None:
        with pytest.raises(NotAcceptable):
            wants_png(accept)
    else:
        assert wants_png(accept) is png
