"""``python -m service`` / ``pfvit-serve``: run the service with uvicorn on the configured port."""

from __future__ import annotations

import logging
import sys

import uvicorn

from service.config import get_settings
from service.errors import ModelLoadError


def main() -> int:
    settings = get_settings()
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
