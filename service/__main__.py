"""``python -m service`` / ``pfvit-serve``: run the service with uvicorn on the configured port."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import textwrap
import uuid
from collections.abc import Sequence

import h11
import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.problems import PROBLEM_JSON, problem_body
from service.config import Settings
from service.errors import ModelLoadError


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers, and problem documents for
    malformed HTTP.

    uvicorn bounds idle keep-alive connections but not a client that sends its headers a byte
    at a time (slowloris): each such connection stays open and counts against the connection
    cap. Here a connection must complete a request's headers within ``header_timeout_s`` of
    being opened or of its previous response, or it is closed. The body has its own deadline
    in the application (408).
    """

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

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
            problem_body(slug="bad-request", title="Bad request", status=400, detail=f"malformed HTTP: {msg}", request_id=uuid.uuid4().hex)
        ).encode()
        headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _headers_overdue(self) -> None:
        self._header_timer = None
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving and not self.transport.is_closing():
            self.transport.close()


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def settings_help() -> str:
    """Every setting: its environment variable, default and meaning (from ``Settings`` itself)."""
    lines = ["settings (environment variables, also read from a .env file):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        head = f"  PFVIT_{name.upper()} (default: {default})"
        lines.append(head)
        if field.description:
            lines.extend(textwrap.wrap(field.description, width=96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pfvit-serve",
        description=(
            "Run the PF-ViT service (POST /v1/recognize, POST /v1/poker-face, /docs, /metrics). "
            "Every setting is an environment variable with the PFVIT_ prefix; the flags below "
            "override the two most often changed."
        ),
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help=f"interface to listen on (PFVIT_HOST; default {Settings.model_fields['host'].default})")
    parser.add_argument("--port", type=_port, help=f"port (PFVIT_PORT; default {Settings.model_fields['port'].default})")
    return parser.parse_args(argv)


def _settings_error_line(exc: ValidationError) -> str:
    """``PFVIT_PORT='x': Input should be a valid integer; ...`` on one line."""
    parts = []
    for error in exc.errors(include_url=False):
        name = "PFVIT_" + "_".join(str(p) for p in error["loc"][:1]).upper()
        value = error.get("input")
        shown = f"={value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
        parts.append(f"{name}{shown}: {error['msg']}")
    return "invalid setting: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"pfvit: {_settings_error_line(exc)}", file=sys.stderr)
        return 2
    from service.api.tracing import configure_logging
    from service.app import create_app
    from service.state import ServiceState

    log_config = configure_logging(settings.log_level, settings.log_format)
    try:
        # The models are checked (cards, checksums) before the port is bound, so a missing or
        # altered model reads as one clear line and the process never listens.
        state = ServiceState(settings)
        state.preflight()
    except ModelLoadError as exc:
        print(f"pfvit: cannot start: {exc.detail}", file=sys.stderr)
        return 2

    server: uvicorn.Server | None = None
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        # A model fault found while loading (a graph ONNX Runtime cannot read, a label count or
        # shape that does not match the card): stop serving rather than stay up, never ready.
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, state=state, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        log_config=log_config if log_config is not None else uvicorn.config.LOGGING_CONFIG,
        access_log=settings.log_format != "json",  # the JSON access record replaces uvicorn's line
        # Connections: idle keep-alive connections are closed, the number of concurrent
        # connections is capped (uvicorn answers 503 beyond it), and on SIGTERM in-flight
        # requests get a bounded time to finish; a connection that does not send a request's
        # headers in time is closed.
        http=type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": settings.header_timeout_s}),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except ModelLoadError as exc:
        print(f"pfvit: cannot start: {exc.detail}", file=sys.stderr)
        return 2
    if fatal:
        print(f"pfvit: cannot start: {fatal[0]}", file=sys.stderr)
        return 2
    if not server.started:
        # uvicorn swallows lifespan errors after logging them; make the exit status say so.
        print("pfvit: the service did not start (see the error above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
