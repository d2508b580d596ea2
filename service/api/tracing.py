"""Request IDs and the one-line-per-request access record.

Every request carries an ID: the client's ``X-Request-ID`` when it is a sane token, else a
new one. It is echoed in the response header, in every problem document and in the access
record. The access record is what ``PFVIT_LOG_FORMAT=json`` writes, one JSON line per
request: route template, method, status, duration, and for analysis requests the number of
images and faces, the stage timings, the model and the execution provider. It never holds
image content or file names.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

REQUEST_ID_HEADER = "X-Request-ID"
# What we take from a client: short, printable, no separators that could forge log fields.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("pfvit_request_id", default=None)

ACCESS_LOG = logging.getLogger("pfvit.access")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a fresh UUID4 (hex)."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if _CLIENT_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def access_fields(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """The per-request dict that routes fill in (images, faces, timings, model, provider)."""
    fields: dict[str, Any] = scope.setdefault("state", {}).setdefault("pfvit_access", {})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per log record. Access records carry their fields in ``record.access``."""

    converter = staticmethod(time.gmtime)  # timestamps in UTC, as the "Z" says

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out["event"] = "request"
            out.update(access)
        else:
            out["message"] = record.getMessage()
            rid = request_id_var.get()
            if rid:
                out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def configure_logging(level: str, log_format: str) -> dict[str, Any] | None:
    """Set up the root logger; returns the log config to hand uvicorn (None: leave its own)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if log_format != "json":
        return None
    # uvicorn's loggers propagate to the root handler, so they are JSON too; its access log is
    # replaced by ours (which knows the route template, images, faces and timings).
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
