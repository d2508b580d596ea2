"""The FastAPI application factory.

Heavy objects are built in the lifespan, never at import time: importing this module loads
no model. ``create_app(settings)`` is what tests and ``python -m service`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__, metrics
from service.api.middleware import BodyLimitAndMetrics
from service.api.problems import install_problem_handlers
from service.api.routes import limits, poker_face, recognize, system
from service.api.routes.ui import install_demo_page
from service.config import Settings, get_settings
from service.state import ServiceState

log = logging.getLogger(__name__)

DESCRIPTION = """
Reads emotions from faces with **PF-ViT** (Poker Face Vision Transformer) on ONNX Runtime.

* `POST /v1/recognize` — per-face emotion label, probabilities and raw logits.
* `POST /v1/poker-face` — the generated emotionless "poker face" of every face.
* `GET /` — a demo page that calls both from the browser.

Errors are RFC 9457 problem documents (`application/problem+json`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings)
        # Refuse to start on a missing or tampered model, before accepting any connection.
        state.preflight()
        app.state.service = state
        metrics.READY.set(0)
        loader = asyncio.create_task(state.load_in_background())
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            metrics.READY.set(0)
            state.close()

    app = FastAPI(
        title="PF-ViT serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    app.include_router(recognize.router)
    app.include_router(poker_face.router)
    app.include_router(system.router)
    app.include_router(limits.router)
    install_demo_page(app, settings)
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=settings.max_upload_bytes)
    return app
