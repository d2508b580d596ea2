"""``python -m service`` / ``pfvit-serve``: run the service with uvicorn on the configured port."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.config import Settings
from service.errors import ModelLoadError
from service.server import HeaderDeadlineProtocol, ServiceConfig


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
            lines.extend(
                textwrap.wrap(field.description, width=96, initial_indent="      ", subsequent_indent="      ")
            )
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
    parser.add_argument(
        "--host", help=f"interface to listen on (PFVIT_HOST; default {Settings.model_fields['host'].default})"
    )
    parser.add_argument(
        "--port", type=_port, help=f"port (PFVIT_PORT; default {Settings.model_fields['port'].default})"
    )
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

    if settings.workers > 1:
        return _serve_workers(settings, overrides, log_config)
    app = create_app(settings, state=state, on_fatal=on_fatal)
    config = _uvicorn_config(app, settings, log_config)
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


def _uvicorn_config(
    app: Callable[..., Any] | str, settings: Settings, log_config: dict[str, Any] | None, **kwargs: Any
) -> ServiceConfig:
    return ServiceConfig(
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
        http=HeaderDeadlineProtocol,
        # No WebSocket route exists: a handshake is answered as the plain HTTP request it also
        # is (a problem document for any path but the open GET routes), whichever WebSocket
        # library happens to be installed.
        ws="none",
        header_timeout_s=settings.header_timeout_s,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
        **kwargs,
    )


def _serve_workers(settings: Settings, overrides: dict[str, Any], log_config: dict[str, Any] | None) -> int:
    """``PFVIT_WORKERS`` > 1: uvicorn's supervisor runs that many processes on one socket,
    each building its app (and loading its own models) with ``service.app:worker_app``.

    The workers read their settings from the environment, so the command-line overrides go
    there; they share their metrics through a fresh folder (``PROMETHEUS_MULTIPROC_DIR``),
    removed at exit, where a worker that dies has its live gauges cleared by the supervisor. A
    model fault in any worker stops them all and exits with status 2.
    """
    from service.app import WORKER_FATAL_FILE_ENV
    from service.server import WorkerSupervisor

    run_dir = Path(tempfile.mkdtemp(prefix="pfvit-serve-"))
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    fatal_file = run_dir / "fatal"
    os.environ.update({f"PFVIT_{k.upper()}": str(v) for k, v in overrides.items()})
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ[WORKER_FATAL_FILE_ENV] = str(fatal_file)
    try:
        config = _uvicorn_config("service.app:worker_app", settings, log_config, factory=True, workers=settings.workers)
        WorkerSupervisor(config, sockets=[config.bind_socket()]).run()
        if fatal_file.is_file():
            reason = fatal_file.read_text(encoding="utf-8").splitlines()[0]
            print(f"pfvit: cannot start: {reason}", file=sys.stderr)
            return 2
        return 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
