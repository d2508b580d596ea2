"""Errors -> RFC 9457 problem documents (``application/problem+json``), in one place.

Each of our exception types carries its status and problem type; this module renders them,
and maps the framework's own validation and routing errors to the same document shape.
Every document carries the request's ID. An exception that is none of ours is a bug: it is
logged with its traceback and re-raised to the server (see ``_on_unhandled``); the client
gets a 500 problem document that says nothing about the server's insides.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.api.tracing import REQUEST_ID_HEADER, request_id_var
from service.config import Settings
from service.errors import PFViTError, ValidationFailed

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://pfvit.dev/problems/"

# Status codes the framework itself raises (routing, methods), with our slugs for them.
_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Upload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def problem_body(
    *,
    slug: str,
    title: str,
    status: int,
    detail: str,
    instance: str | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    request_id = request_id or request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _headers(extra: dict[str, str] | None = None, request_id: str | None = None) -> dict[str, str]:
    headers = dict(extra or {})
    request_id = request_id or request_id_var.get()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


def problem_response(
    exc: PFViTError, instance: str | None = None, *, retry_after_s: int = 5, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Render one of our errors. Also used by middleware that answers before routing."""
    metrics.ERRORS.labels(type=exc.slug).inc()
    body = problem_body(
        slug=exc.slug, title=exc.title, status=exc.status, detail=exc.detail, instance=instance, **exc.extra
    )
    extra = dict(headers or {})
    if exc.retry_after:
        extra["Retry-After"] = str(retry_after_s)
    return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=_headers(extra))


def _retry_after(request: Request) -> int:
    settings: Settings = request.app.state.settings
    return settings.retry_after_s


async def _on_pfvit_error(request: Request, exc: PFViTError) -> JSONResponse:
    if exc.status == 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    elif exc.status in (499, 504):
        log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
    headers = {"WWW-Authenticate": 'Bearer realm="pfvit"'} if exc.status == 401 else None
    return problem_response(exc, instance=request.url.path, retry_after_s=_retry_after(request), headers=headers)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    failed = validation_failed(exc.errors())
    return problem_response(failed, instance=request.url.path)


# Errors listed in one validation-error document at most; ``error_count`` gives them all.
MAX_LISTED_ERRORS = 20


def validation_failed(raw_errors: Any, prefix: tuple[str | int, ...] = ()) -> ValidationFailed:
    """One ``validation-error`` problem from pydantic's error list (``{loc, msg, type}`` each):
    the first ``MAX_LISTED_ERRORS`` listed, ``error_count`` counting all of them, so that
    the document stays small whatever the request."""
    raw = list(raw_errors)
    errors = [
        {"loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in raw[:MAX_LISTED_ERRORS]
    ]
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    if len(raw) > 3:
        where += f"; and {len(raw) - 3} more"
    return ValidationFailed(where or "the request does not match the API", errors=errors, error_count=len(raw))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    metrics.ERRORS.labels(type=slug).inc()
    detail = exc.detail if isinstance(exc.detail, str) else title
    body = problem_body(slug=slug, title=title, status=exc.status_code, detail=detail, instance=request.url.path)
    return JSONResponse(
        body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=_headers(getattr(exc, "headers", None))
    )


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    """A bug. Starlette's outermost middleware calls this, then re-raises ``exc`` to the
    server, which logs the traceback: nothing is hidden, the client just gets a problem
    document instead of ``text/plain``."""
    metrics.ERRORS.labels(type="internal-error").inc()
    # Runs outside the request middleware, so the ID comes from the request's state.
    request_id = getattr(request.state, "request_id", None)
    body = problem_body(
        slug="internal-error",
        title="Internal error",
        status=500,
        detail="the server hit an unexpected error; it has been logged",
        instance=request.url.path,
        request_id=request_id,
    )
    return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON, headers=_headers(request_id=request_id))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PFViTError, _on_pfvit_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unhandled)
