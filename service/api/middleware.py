"""ASGI middleware: the request-body limit and the HTTP metrics, around every request."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.problems import problem_response
from service.errors import PayloadTooLarge


class BodyLimitAndMetrics:
    """Counts and times every HTTP request; refuses bodies over ``max_body_bytes`` with 413.

    The body is read (up to the limit) before the application sees it, so an oversized
    upload is refused whether or not it declares a Content-Length, and the application
    never parses a partial form.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}
        metrics.HTTP_IN_FLIGHT.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            replay = await self._buffer_body(scope, receive)
            if replay is None:
                exc = PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes", limit_bytes=self.max_body_bytes)
                await problem_response(exc, instance=scope.get("path"))(scope, receive, send_wrapper)
            else:
                await self.app(scope, replay, send_wrapper)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(route=template, method=scope.get("method", "?"), status=str(status_holder["status"])).inc()
            metrics.HTTP_LATENCY.labels(route=template).observe(time.perf_counter() - start)

    async def _buffer_body(self, scope: Scope, receive: Receive) -> Receive | None:
        """Read the whole body, or return None as soon as it is over the limit."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                chunks_done = message

                async def disconnected() -> Message:
                    return chunks_done

                return disconnected
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                return None
            chunks.append(body)
            more = message.get("more_body", False)
        payload = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()  # after the body: wait for the client's disconnect

        return replay
