"""GET /v1/limits: what one request may carry, so clients can size their batches."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import SettingsDep
from service.api.schemas import Limits

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/limits", response_model=Limits, summary="Request limits: images, bytes, pixels and faces per request")
async def limits(settings: SettingsDep) -> Limits:
    return Limits(
        max_images=settings.max_images,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
        max_faces_limit=settings.max_faces_limit,
        default_max_faces=settings.default_max_faces,
    )
