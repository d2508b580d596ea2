"""The demo page: ``GET /`` and its static files under ``/ui/``.

Plain HTML, CSS and JavaScript from ``service/static`` with nothing fetched from elsewhere, so
the page works air-gapped. It calls the public API like any other client. ``PFVIT_UI_ENABLED=false``
leaves both the page and its files unrouted (404).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.config import Settings

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_PREFIX = "/ui"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def demo_page() -> FileResponse:
    # no-cache: a browser revalidates, so an upgraded service never runs with a stale page
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def install_demo_page(app: FastAPI, settings: Settings) -> None:
    """Route ``/`` and mount the page's files when the settings allow it."""
    if not settings.ui_enabled:
        return
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="ui")
