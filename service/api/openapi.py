"""The OpenAPI document, made to tell the truth.

FastAPI writes most of it from the routes; this module adds what the routes cannot say by
themselves: every error as a ``Problem`` (``application/problem+json``), both request
forms of the analysis routes (multipart with file pickers, base64 JSON, or one image as the
body), the bounds that
are settings (images per request, ``max_faces``), and the security scheme where API keys
apply.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api.problems import PROBLEM_BASE, PROBLEM_JSON
from service.api.schemas import JsonPokerFaceRequest, JsonRecognizeRequest, Problem
from service.config import Settings

_REF = "#/components/schemas/{model}"
_PROBLEM_REF = {"$ref": _REF.format(model="Problem")}

# Errors every analysis route can answer (401 is added where API keys apply).
ANALYSIS_ERRORS = (400, 408, 413, 415, 422, 503, 504)

_ERRORS: dict[int, tuple[str, str, str, str]] = {
    # status: (when, slug, title, example detail)
    400: (
        "Empty upload, more images than the service takes, or an unparsable multipart body",
        "empty-upload",
        "Empty upload",
        "image 0 (a.jpg): the uploaded file is empty",
    ),
    401: (
        "API keys are configured and none, or a wrong one, was sent",
        "unauthorized",
        "Missing or invalid API key",
        "the API key is not valid",
    ),
    406: (
        "`Accept` is neither JSON nor PNG",
        "not-acceptable",
        "Not acceptable",
        "cannot answer with 'text/html'; ask for application/json or image/png",
    ),
    408: (
        "The request body did not arrive in time",
        "request-timeout",
        "Request body not received in time",
        "the request body did not arrive within 30 s",
    ),
    413: (
        "Upload too large (payload-too-large), or an image or the whole request over its pixel budget "
        "(image-too-large)",
        "image-too-large",
        "Image has too many pixels",
        "image is 30000x30000 = 900000000 pixels; the limit is 40000000",
    ),
    415: (
        "Image format not accepted, or a request body that is not multipart, JSON or an image",
        "unsupported-media-type",
        "Unsupported image format",
        "image format GIF is not accepted; send JPEG, PNG, WebP or BMP",
    ),
    422: (
        "Not an image or truncated (invalid-image); a missing field or an invalid option (validation-error); "
        "no face where a PNG must be returned (no-face-found); aligned=true on an image that is not square "
        "(not-square)",
        "invalid-image",
        "Invalid image",
        "image data is truncated or corrupt",
    ),
    500: (
        "A fault of the server (it is logged)",
        "internal-error",
        "Internal error",
        "the server hit an unexpected error; it has been logged",
    ),
    501: (
        "The loaded model has no poker-face graph",
        "capability-missing",
        "Not supported by the loaded model",
        "model 'x' ships no poker-face graph",
    ),
    503: (
        "Models still loading (not-ready) or the waiting line is full (queue-full); see Retry-After",
        "queue-full",
        "Service busy",
        "all computing slots are busy and 8 requests are waiting; retry shortly",
    ),
    504: (
        "No answer within the request deadline (queue wait included)",
        "deadline-exceeded",
        "Request took longer than the deadline",
        "the request did not finish within the deadline of 30 s",
    ),
}

# The fixture photo and its one face, as both examples show them.
_IMAGE: dict[str, Any] = {"index": 0, "filename": "astronaut.png", "width": 512, "height": 512}
_FACE_GEOMETRY: dict[str, Any] = {
    "box": {"x1": 180.03, "y1": 60.77, "x2": 268.86, "y2": 174.17},
    "score": 0.999991,
    "landmarks": [[204.4, 100.1], [248.26, 103.61], [225.32, 129.09], [201.47, 139.32], [245.57, 142.73]],
}

RECOGNIZE_EXAMPLE: dict[str, Any] = {
    "model": {"name": "pfvit-micro-ferplus", "version": "2.1.0", "provider": "CPUExecutionProvider"},
    "labels": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"],
    "images": [
        {
            **_IMAGE,
            "faces": [
                {
                    **_FACE_GEOMETRY,
                    "label": "happiness",
                    "probabilities": {
                        "neutral": 0.006,
                        "happiness": 0.842,
                        "surprise": 0.011,
                        "sadness": 0.006,
                        "anger": 0.012,
                        "disgust": 0.052,
                        "fear": 0.021,
                        "contempt": 0.051,
                    },
                    "logits": [-0.18, 4.8, 0.45, -0.18, 0.55, 2.0, 1.09, 1.98],
                    "poker_face_png": None,
                }
            ],
        }
    ],
    "timings_ms": {"queue": 0.06, "decode": 10.0, "detect": 39.0, "align": 1.2, "infer": 5.9, "total": 57.0},
}

POKER_FACE_EXAMPLE: dict[str, Any] = {
    "model": RECOGNIZE_EXAMPLE["model"],
    "images": [
        {
            **_IMAGE,
            "faces": [
                {
                    **_FACE_GEOMETRY,
                    "poker_face_png": "iVBORw0KGgoAAAANSUhEUgAAADAAAAAwCAIAAADYYG7QAAAA...",
                }
            ],
        }
    ],
    "timings_ms": {
        "queue": 0.01,
        "decode": 4.0,
        "detect": 38.2,
        "align": 0.9,
        "generate": 3.1,
        "encode": 0.6,
        "total": 47.9,
    },
}

# Request bodies of the analysis routes: path -> the JSON form's model.
_JSON_BODIES: dict[str, type[BaseModel]] = {
    "/v1/recognize": JsonRecognizeRequest,
    "/v1/poker-face": JsonPokerFaceRequest,
}


def problem_response(status: int) -> dict[str, Any]:
    when, slug, title, detail = _ERRORS[status]
    example = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": "5f0c6a3e9b2d4c1a8e7f6d5c4b3a2910",
    }
    return {"description": when, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF, "example": example}}}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for a route: each status a Problem document."""
    return {status: problem_response(status) for status in statuses}


def ok_example(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "Successful Response", "content": {"application/json": {"example": example}}}}


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def build_openapi(app: FastAPI, settings: Settings, *, secured_paths: set[str]) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = _hoist(Problem.model_json_schema(ref_template=_REF), components)
    # FastAPI's own 422 shape is never sent: every validation error is a Problem.
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)

    for path, operations in spec["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses and PROBLEM_JSON not in responses["422"].get("content", {}):
                responses["422"] = problem_response(422)
            if path in secured_paths:
                responses["401"] = problem_response(401)
            responses["500"] = problem_response(500)
            for param in operation.get("parameters", []):
                if param.get("name") == "max_faces" and param.get("in") == "query":
                    _bound_max_faces(param["schema"], settings.max_faces_limit)
            if path in _JSON_BODIES:
                operation["requestBody"] = _analysis_body(_JSON_BODIES[path], settings, components)
    return spec


def _bound_max_faces(schema: dict[str, Any], limit: int) -> None:
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "integer":
            option["maximum"] = limit


def _analysis_body(json_model: type[BaseModel], settings: Settings, components: dict[str, Any]) -> dict[str, Any]:
    name = json_model.__name__
    schema = _hoist(json_model.model_json_schema(ref_template=_REF), components)
    schema["properties"]["images"]["maxItems"] = settings.max_images
    _bound_max_faces(schema["properties"]["max_faces"], settings.max_faces_limit)
    components[name] = schema
    multipart = {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {
                "type": "array",
                # format: binary is what Swagger UI draws as a file picker.
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
                "maxItems": settings.max_images,
                "description": "One or more images (JPEG, PNG, WebP or BMP; EXIF orientation is honoured). "
                "Repeat the field for several.",
            }
        },
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": multipart},
            # One image as the body itself; its format is read from its bytes, as an upload's is.
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {"$ref": _REF.format(model=name)},
                "example": {
                    "images": [{"data": "iVBORw0KGgoAAAANSUhEUgAA...", "filename": "face.png"}],
                    "max_faces": 5,
                },
            },
        },
    }
