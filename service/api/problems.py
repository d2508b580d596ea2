"""Errors -> RFC 9457 problem documents (``application/problem+json``), in one place.

Each of our exception types carries its status and problem type; this module renders them,
and maps the framework's own validation and routing errors to the same document shape.
Nothing here catches bare ``Exception``: a bug surfaces as the server's plain 500 and in the
logs, never disguised as a client error.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.errors import PFViTError, ValidationFailed

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_PROBLEM_BASE = "https://pfvit.dev/problems/"

# Status codes the framework itself raises (routing, methods), with our slugs for them.
_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Upload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def problem_body(*, slug: str, title: str, status: int, detail: str, instance: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": _PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(exc: PFViTError, instance: str | None = None) -> JSONResponse:
    """Render one of our errors. Also used by middleware that answers before routing."""
    metrics.ERRORS.labels(type=exc.slug).inc()
    body = problem_body(slug=exc.slug, title=exc.title, status=exc.status, detail=exc.detail, instance=instance, **exc.extra)
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=headers)


async def _on_pfvit_error(request: Request, exc: PFViTError) -> JSONResponse:
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    return problem_response(exc, instance=request.url.path)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
    ]
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    failed = ValidationFailed(where or "the request does not match the API", errors=errors)
    return problem_response(failed, instance=request.url.path)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    metrics.ERRORS.labels(type=slug).inc()
    detail = exc.detail if isinstance(exc.detail, str) else title
    body = problem_body(slug=slug, title=title, status=exc.status_code, detail=detail, instance=request.url.path)
    return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=getattr(exc, "headers", None))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PFViTError, _on_pfvit_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
