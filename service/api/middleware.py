"""ASGI middleware around every request: its ID, the API key (from the headers, before the
body), the body limit and timeout, HTTP metrics, the access record; and CORS whose refusals
are problem documents."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.deps import api_key_from_headers, check_api_key
from service.api.problems import PROBLEM_JSON, problem_body, problem_response
from service.api.tracing import ACCESS_LOG, REQUEST_ID_HEADER, access_fields, request_id_from, request_id_var
from service.errors import PayloadTooLarge, PFViTError, RequestTimeout, Unauthorized

# A JSON body carries images as base64: 4 bytes for every 3, plus the JSON around them.
# Its limit on the wire is scaled so that the decoded images get the same byte limit as a
# multipart upload (the decoded bytes are counted again when the images are read).
_JSON_OVERHEAD_BYTES = 64 * 1024
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="pfvit"'}


def json_body_limit(max_upload_bytes: int) -> int:
    return -(-max_upload_bytes * 4 // 3) + _JSON_OVERHEAD_BYTES


class RequestContext:
    """Names, bounds, counts and times every HTTP request.

    - ``X-Request-ID``: the client's (when sane) or a new one, echoed on the response and in
      every problem document.
    - With API keys set, a request to a protected path without a valid key is answered 401
      from its headers alone: its body is never buffered (the server discards what the
      client still sends), so keyless clients cannot make the server hold their uploads.
    - The body is read, up to its limit and within ``body_timeout_s``, before the
      application sees it: an oversized upload is refused with 413 whether or not it
      declares a Content-Length, a stalled one with 408, and the application never parses a
      partial form.
    - HTTP metrics by route template (never the raw path) and a bounded method label.
    - With ``access_log`` on, one record per request (``service.api.tracing``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        access_log: bool,
        api_keys: Collection[str] = (),
        protected_paths: Collection[str] = (),
        protected_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.api_keys = list(api_keys)
        self.protected_paths = frozenset(protected_paths)
        self.protected_prefixes = protected_prefixes
        self.max_body_bytes = max_body_bytes
        self.max_json_body_bytes = json_body_limit(max_body_bytes)
        self.body_timeout_s = body_timeout_s
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_from(scope.get("headers", []))
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = {"status": 500}
        metrics.HTTP_IN_FLIGHT.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                headers = list(message.get("headers", []))
                if not any(
                    name.lower() == _REQUEST_ID_KEY for name, _ in headers
                ):  # problem responses carry it already
                    headers.append((_REQUEST_ID_KEY, request_id.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            refused = self._refuse_key(scope)
            if refused is not None:
                await problem_response(refused, instance=scope.get("path"), headers=_WWW_AUTHENTICATE)(
                    scope, receive, send_wrapper
                )
                return
            try:
                replay = await asyncio.wait_for(self._buffer_body(scope, receive), timeout=self.body_timeout_s)
            except asyncio.TimeoutError:
                replay = RequestTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s")
            if isinstance(replay, PFViTError):
                await problem_response(replay, instance=scope.get("path"))(scope, receive, send_wrapper)
            else:
                await self.app(scope, replay, send_wrapper)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = metrics.method_label(scope.get("method", ""))
            status = status_holder["status"]
            seconds = time.perf_counter() - start
            metrics.HTTP_REQUESTS.labels(route=template, method=method, status=str(status)).inc()
            metrics.WORKER_REQUESTS.inc()
            metrics.HTTP_LATENCY.labels(route=template).observe(seconds)
            if self.access_log:
                record = {
                    "request_id": request_id,
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                }
                record.update(access_fields(scope))
                ACCESS_LOG.log(logging.INFO, "%s %s %d", method, template, status, extra={"access": record})
            request_id_var.reset(token)

    def _refuse_key(self, scope: Scope) -> Unauthorized | None:
        """The 401 for a protected path without a valid key, decided from the headers alone."""
        if not self.api_keys:
            return None
        path = scope.get("path", "")
        if path not in self.protected_paths and not path.startswith(self.protected_prefixes or ("\0",)):
            return None
        try:
            check_api_key(api_key_from_headers(scope.get("headers", ())), self.api_keys)
        except Unauthorized as exc:
            return exc
        return None

    def _limit_for(self, scope: Scope) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                return (
                    self.max_json_body_bytes
                    if value.split(b";")[0].strip().lower() == b"application/json"
                    else self.max_body_bytes
                )
        return self.max_body_bytes

    async def _buffer_body(self, scope: Scope, receive: Receive) -> Receive | PFViTError:
        """Read the whole body, or return the error as soon as it is over the limit."""
        limit = self._limit_for(scope)
        too_large = PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", limit_bytes=limit)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return too_large
                except ValueError:
                    pass
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":

                async def disconnected(message: Message = message) -> Message:
                    return message

                return disconnected
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                return too_large
            chunks.append(body)
            more = message.get("more_body", False)
        payload = b"".join(chunks)
        del chunks
        sent = False

        async def replay() -> Message:
            nonlocal sent, payload
            if not sent:
                sent = True
                message = {"type": "http.request", "body": payload, "more_body": False}
                payload = b""  # the application holds it now; do not keep a second reference
                return message
            return await receive()  # after the body: wait for the client's disconnect

        return replay


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight (an origin, method or header not allowed)
    answered as a ``bad-request`` problem document instead of plain text. It is the outermost
    middleware, so it names the request ID itself."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        request_id = request_id_from(request_headers.raw)
        reason = bytes(response.body).decode("utf-8", "replace")
        metrics.ERRORS.labels(type="bad-request").inc()
        body = problem_body(
            slug="bad-request",
            title="Bad request",
            status=response.status_code,
            detail=f"CORS preflight refused: {reason}",
            request_id=request_id,
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        headers[REQUEST_ID_HEADER] = request_id
        return JSONResponse(body, status_code=response.status_code, media_type=PROBLEM_JSON, headers=headers)
