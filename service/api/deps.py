"""Dependencies of the routes, as ``Annotated`` aliases (the options' are in ``service.api.options``)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import Unauthorized
from service.pipeline import FacePipeline
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    service: ServiceState = request.app.state.service
    return service


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_pipeline(state: StateDep) -> FacePipeline:
    """The loaded pipeline, or 503 while the models load (answered before the body is read)."""
    return state.require_pipeline()


PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]


# --- access ----------------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="Authorization: Bearer <one of PFVIT_API_KEYS>"
)
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <one of PFVIT_API_KEYS>"
)


def check_api_key(given: str | None, keys: list[str]) -> None:
    """Raise ``Unauthorized`` unless ``given`` is one of ``keys``.

    Compared with every key, in constant time per key, so timing does not tell which is close.
    """
    if not given:
        raise Unauthorized("this service needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("the API key is not valid")


def api_key_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries in raw ASGI headers, read as the route's dependencies read
    it: the first ``X-API-Key`` when not empty, else the first ``Authorization``'s Bearer token."""
    api_key = authorization = None
    for name, value in headers:
        if name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    if api_key:
        return api_key
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> None:
    """One of the configured keys, as a Bearer token or in ``X-API-Key`` (401 otherwise).

    Only routed where ``PFVIT_API_KEYS`` is set (``service.app``), so the OpenAPI document
    names a security scheme exactly when one applies. The request middleware has already
    refused a request without a valid key from its headers alone, before reading its body
    (``service.api.middleware``); this is the same check where the route is declared.
    """
    check_api_key(api_key or (bearer.credentials if bearer is not None else None), settings.api_keys)
