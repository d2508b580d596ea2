"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Query, Request, UploadFile

from service.config import Settings
from service.errors import ValidationFailed
from service.pipeline import DetectOptions
from service.state import ServiceState
from service.vision.mtcnn import MIN_FACE_SIZE_FLOOR


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]

ImagesField = Annotated[
    list[UploadFile],
    File(description="One or more images (JPEG, PNG, WebP or BMP; EXIF orientation is honoured). Repeat the field for several."),
]


def detect_options(
    settings: SettingsDep,
    max_faces: Annotated[int | None, Query(ge=1, description="Most faces returned per image (highest scores first).")] = None,
    min_face_size: Annotated[int | None, Query(ge=MIN_FACE_SIZE_FLOOR, le=4096, description="Smallest face side searched for, in pixels.")] = None,
    threshold: Annotated[float | None, Query(gt=0.0, lt=1.0, description="Final detection probability threshold.")] = None,
    aligned: Annotated[bool, Query(description="The upload is already an aligned face crop: skip detection.")] = False,
) -> DetectOptions:
    if max_faces is not None and max_faces > settings.max_faces_limit:
        # The bound is a setting, so the signature cannot carry it; reported like max_faces=0.
        limit = settings.max_faces_limit
        raise ValidationFailed(
            f"query.max_faces: {max_faces} is over this service's limit of {limit}",
            errors=[{"loc": ["query", "max_faces"], "msg": f"Input should be less than or equal to {limit}", "type": "less_than_equal"}],
        )
    return DetectOptions(
        max_faces=max_faces or settings.default_max_faces,
        min_face_size=min_face_size or settings.default_min_face_size,
        threshold=threshold if threshold is not None else settings.default_detection_threshold,
        aligned=aligned,
    )


DetectOptionsDep = Annotated[DetectOptions, Depends(detect_options)]
