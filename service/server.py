"""The HTTP server's parts that are ours: uvicorn's h11 protocol with a header deadline and
problem documents for malformed HTTP, the uvicorn config that carries the deadline, and the
supervisor of several workers that clears a dead worker's metrics.

In a module of their own, not in ``service/__main__.py``: with several workers uvicorn pickles
its config (and so these classes, by name) into every worker process, which imports them from
here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from service import metrics
from service.api.problems import PROBLEM_JSON, problem_body


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers, and problem documents for
    malformed HTTP.

    uvicorn bounds idle keep-alive connections but not a client that sends its headers a byte
    at a time (slowloris): each such connection stays open and counts against the connection
    cap. Here a connection must complete a request's headers within ``header_timeout_s`` of
    being opened or of its previous response, or it is closed. The body has its own deadline
    in the application (408).
    """

    _header_timer: asyncio.TimerHandle | None = None

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float = getattr(config, "header_timeout_s", 10.0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, as a problem document like every other
        error (the application never saw the request, so this is the one place to do it)."""
        body = json.dumps(
            problem_body(
                slug="bad-request",
                title="Bad request",
                status=400,
                detail=f"malformed HTTP: {msg}",
                request_id=uuid.uuid4().hex,
            )
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _headers_overdue(self) -> None:
        self._header_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()


class ServiceConfig(uvicorn.Config):
    """uvicorn's config plus the header deadline that :class:`HeaderDeadlineProtocol` reads.

    A plain attribute of the config, not of a protocol class made on the fly, because uvicorn
    pickles its config into every worker process."""

    def __init__(self, app: Callable[..., Any] | str, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of several workers, which replaces a worker that died; here it
    also marks the dead worker's metrics files dead (prometheus_client's
    ``mark_process_dead``). A worker killed mid-request never runs its shutdown, so without
    this its in-flight requests and its ``pfvit_ready`` series would stay in ``/metrics``
    for the life of the server."""

    def keep_subprocess_alive(self) -> None:
        self._clear_replaced(super().keep_subprocess_alive)

    def restart_all(self) -> None:
        self._clear_replaced(super().restart_all)

    def _clear_replaced(self, step: Callable[[], None]) -> None:
        before = [process.pid for process in self.processes]
        step()
        alive = {process.pid for process in self.processes}
        for pid in before:
            if pid is not None and pid not in alive:
                metrics.worker_exited(pid)
