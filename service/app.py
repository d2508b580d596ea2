"""The FastAPI application factory.

Heavy objects are built in the lifespan, never at import time: importing this module loads
no model. ``create_app(settings)`` is what tests and ``python -m service`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.routing import Route

from service import __version__, metrics
from service.api.deps import require_api_key
from service.api.middleware import ProblemCORSMiddleware, RequestContext
from service.api.openapi import build_openapi
from service.api.problems import install_problem_handlers
from service.api.routes import limits, poker_face, recognize, system
from service.api.routes.ui import install_demo_page
from service.api.tracing import REQUEST_ID_HEADER
from service.config import Settings, get_settings
from service.shutdown import drain_on_sigterm
from service.state import ServiceState

log = logging.getLogger(__name__)

DESCRIPTION = """
Reads emotions from faces with **PF-ViT** (Poker Face Vision Transformer) on ONNX Runtime.

* `POST /v1/recognize` — per-face emotion label, probabilities and raw logits.
* `POST /v1/poker-face` — the generated emotionless "poker face" of every face.
* `GET /` — a demo page that calls both from the browser.

Images come as `multipart/form-data` or as base64 in `application/json`.
Errors are RFC 9457 problem documents (`application/problem+json`) carrying the request's
`X-Request-ID`.
"""


def _operation_id(route: APIRoute) -> str:
    """Readable operationIds: the route function's name (recognize, poker_face, readyz, ...)."""
    return route.name


# Every API router, in the order they are routed. Liveness and readiness (system.router) are
# never behind a key: orchestrators probe them.
ROUTERS: tuple[APIRouter, ...] = (
    recognize.router,
    poker_face.router,
    system.models_router,
    limits.router,
    system.router,
    system.metrics_router,
)


def keyed_routers(settings: Settings) -> tuple[APIRouter, ...]:
    """The routers whose routes need one of ``PFVIT_API_KEYS`` (none when no key is set)."""
    if not settings.api_keys:
        return ()
    keyed = (recognize.router, poker_face.router, system.models_router, limits.router)
    return (*keyed, system.metrics_router) if settings.metrics_require_key else keyed


def create_app(
    settings: Settings | None = None,
    *,
    state: ServiceState | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app.

    Args:
        state: an already preflighted state (``pfvit-serve`` checks the models before it
            binds the port); the lifespan makes and preflights one otherwise.
        on_fatal: called with the reason when the models fail to load after start-up;
            ``pfvit-serve`` passes one that stops the server so the process exits non-zero.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = state or ServiceState(settings)
        if not service.preflighted:
            # Refuse to start on a missing or tampered model, before accepting any connection.
            service.preflight()
        app.state.service = service
        metrics.READY.set(0)
        # On SIGTERM under pfvit-serve: not ready at once, the listener closes after the drain.
        restore_sigterm = drain_on_sigterm(settings.shutdown_drain_s, service.begin_draining)
        loader = asyncio.create_task(service.load_in_background(on_failure=on_fatal))
        try:
            yield
        finally:
            restore_sigterm()
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            metrics.READY.set(0)
            service.close()
            metrics.worker_exited()

    app = FastAPIOffline(
        title="PF-ViT serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        # Swagger UI and ReDoc from files inside the installed package: /docs works offline.
        static_url="/docs-assets",
        swagger_ui_parameters={"tryItOutEnabled": True, "displayRequestDuration": True},
        # /v1/recognize/ is a 404, not a redirect whose Location is built from the Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings
    # What the framework routed before any router of ours: the OpenAPI document and the docs
    # pages (their files are the /docs-assets mount).
    docs_routes = {route.path for route in app.routes if isinstance(route, Route)}
    install_problem_handlers(app)

    keyed = keyed_routers(settings)
    secured: list[Any] = [Depends(require_api_key)]
    for router in ROUTERS:
        app.include_router(router, dependencies=secured if router in keyed else [])
    install_demo_page(app, settings)
    # The middleware checks the key of these before reading a body; the OpenAPI document marks them.
    secured_paths = {route.path for router in keyed for route in router.routes if isinstance(route, APIRoute)}
    docs_paths = docs_routes if settings.api_keys and settings.docs_require_key else set()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings, secured_paths=secured_paths)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        access_log=settings.log_format == "json",
        # The key is checked here, from the headers, before the body is read; the routes'
        # own dependency (require_api_key) says so in the OpenAPI document.
        api_keys=settings.api_keys,
        protected_paths=secured_paths | docs_paths,
        protected_prefixes=("/docs-assets/",) if docs_paths else (),
    )
    if settings.cors_origins:
        # Outermost, so that every answer (problem documents from the middleware included)
        # carries the CORS headers a browser needs to read it.
        app.add_middleware(
            ProblemCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", "X-Model"],
            max_age=600,
        )
    return app


# --- several worker processes (PFVIT_WORKERS > 1) --------------------------------------------

# Set by pfvit-serve for its workers: the file a worker writes a model fault into before it
# stops the server, so that pfvit-serve can exit non-zero with the reason.
WORKER_FATAL_FILE_ENV = "PFVIT_SERVE_FATAL_FILE"


def worker_app() -> FastAPI:
    """The app of one worker process: ``pfvit-serve`` names this factory to uvicorn when
    ``PFVIT_WORKERS`` > 1; every setting reaches the worker through the environment."""
    import os
    import signal

    from service.api.tracing import configure_logging
    from service.errors import ModelLoadError

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)

    def on_fatal(reason: str) -> None:
        fatal_file = os.environ.get(WORKER_FATAL_FILE_ENV)
        if fatal_file:
            with open(fatal_file, "a", encoding="utf-8") as fh:
                fh.write(reason + "\n")
        os.kill(os.getppid(), signal.SIGTERM)  # the supervisor stops every worker

    state = ServiceState(settings)
    try:
        state.preflight()
    except ModelLoadError as exc:
        on_fatal(exc.detail)
        raise
    return create_app(settings, state=state, on_fatal=on_fatal)
