"""``python -m service`` / ``pfvit-serve``: run the service with uvicorn on the configured port."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn

from service.config import Settings, get_settings
from service.errors import ModelLoadError


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pfvit-serve",
        description=(
            "Run the PF-ViT service (POST /v1/recognize, POST /v1/poker-face, /docs, /metrics). "
            "Every setting is an environment variable with the PFVIT_ prefix (also read from a .env "
            "file; the table is in README.md, 'Settings'); the flags below override the two most "
            "often changed."
        ),
    )
    parser.add_argument("--host", help=f"interface to listen on (PFVIT_HOST; default {Settings.model_fields['host'].default})")
    parser.add_argument("--port", type=_port, help=f"port (PFVIT_PORT; default {Settings.model_fields['port'].default})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides) if overrides else get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.app import create_app
    from service.state import ServiceState

    try:
        # The same check the lifespan runs, done first so a missing model reads as one clear line.
        ServiceState(settings).preflight()
    except ModelLoadError as exc:
        print(f"pfvit: cannot start: {exc.detail}", file=sys.stderr)
        return 2
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run()
    except ModelLoadError as exc:
        print(f"pfvit: cannot start: {exc.detail}", file=sys.stderr)
        return 2
    if not server.started:
        # uvicorn swallows lifespan errors after logging them; make the exit status say so.
        print("pfvit: the service did not start (see the error above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
