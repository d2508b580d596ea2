"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.schemas import JsonDetectOptions
from service.config import Settings
from service.errors import Unauthorized, ValidationFailed
from service.pipeline import DetectOptions, FacePipeline
from service.state import ServiceState
from service.vision.mtcnn import MIN_FACE_SIZE_FLOOR


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


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


# --- options ---------------------------------------------------------------------------------


def query_options(
    max_faces: Annotated[
        int | None, Query(ge=1, description="Most faces returned per image (highest scores first).")
    ] = None,
    min_face_size: Annotated[
        int | None, Query(ge=MIN_FACE_SIZE_FLOOR, le=4096, description="Smallest face side searched for, in pixels.")
    ] = None,
    threshold: Annotated[
        float | None, Query(gt=0.0, lt=1.0, description="Final detection probability threshold.")
    ] = None,
    aligned: Annotated[
        bool | None, Query(description="The upload is already an aligned face crop: skip detection.")
    ] = None,
) -> JsonDetectOptions:
    return JsonDetectOptions(max_faces=max_faces, min_face_size=min_face_size, threshold=threshold, aligned=aligned)


QueryOptionsDep = Annotated[JsonDetectOptions, Depends(query_options)]


def resolve_options(settings: Settings, query: JsonDetectOptions, body: JsonDetectOptions | None) -> DetectOptions:
    """Options from a JSON body win over the query's; the settings fill in the rest."""

    def pick(name: str) -> tuple[object, str]:
        value = getattr(body, name, None) if body is not None else None
        return (value, "body") if value is not None else (getattr(query, name), "query")

    max_faces, where = pick("max_faces")
    if max_faces is not None and max_faces > settings.max_faces_limit:  # type: ignore[operator]
        # The bound is a setting, so the signature cannot carry it; reported like max_faces=0.
        limit = settings.max_faces_limit
        raise ValidationFailed(
            f"{where}.max_faces: {max_faces} is over this service's limit of {limit}",
            errors=[
                {
                    "loc": [where, "max_faces"],
                    "msg": f"Input should be less than or equal to {limit}",
                    "type": "less_than_equal",
                }
            ],
        )
    min_face_size, _ = pick("min_face_size")
    threshold, _ = pick("threshold")
    aligned, _ = pick("aligned")
    return DetectOptions(
        max_faces=int(max_faces or settings.default_max_faces),  # type: ignore[call-overload]
        min_face_size=int(min_face_size or settings.default_min_face_size),  # type: ignore[call-overload]
        threshold=float(threshold if threshold is not None else settings.default_detection_threshold),  # type: ignore[arg-type]
        aligned=bool(aligned),
    )
