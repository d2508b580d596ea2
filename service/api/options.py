"""A request's options: given in its query or its JSON body, resolved once, in one place.

Both analysis routes, and ``pfvit-batch`` for its command-line options, read their options
through :func:`resolve_options`: what the request gives (:class:`GivenOptions`, from the
query and from a JSON body alike) goes in, and :class:`RequestOptions` comes out, the
settings' defaults filled in and the bounds that are settings checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from pydantic import BaseModel

from service.config import Settings
from service.errors import ValidationFailed
from service.pipeline import DetectOptions
from service.vision.mtcnn import MIN_FACE_SIZE_FLOOR


@dataclass(frozen=True)
class GivenOptions:
    """The options a request gives, in its query or in its JSON body; None where it does not say.

    One type for both places, so that a JSON body's options win over the query's field by
    field. The values are already checked against the bounds the schema carries (FastAPI for
    the query, pydantic for a JSON body); bounds that are settings are checked on resolving.
    """

    max_faces: int | None = None
    min_face_size: int | None = None
    threshold: float | None = None
    aligned: bool | None = None
    return_poker_face: bool | None = None
    return_expression_map: bool | None = None
    return_aligned_face: bool | None = None

    @classmethod
    def from_body(cls, body: BaseModel) -> GivenOptions:
        """The options of a parsed JSON body: its fields of these names (a route's body may
        lack some, e.g. ``/v1/poker-face`` has no ``return_poker_face``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**body.model_dump(include=names))


@dataclass(frozen=True)
class RequestOptions:
    """A request's options, resolved: how to find faces, and what to return for each."""

    detect: DetectOptions
    poker_face: bool = False
    expression_map: bool = False
    aligned_face: bool = False


def resolve_options(settings: Settings, query: GivenOptions, body: GivenOptions | None = None) -> RequestOptions:
    """Options from a JSON body win over the query's; the settings fill in the rest.

    Raises:
        ValidationFailed: ``max_faces`` over ``PFVIT_MAX_FACES_LIMIT`` (a bound that is a
            setting, so no signature can carry it; reported like ``max_faces=0``).
    """
    from_body = {k: v for k, v in dataclasses.asdict(body).items() if v is not None} if body is not None else {}
    given = dataclasses.replace(query, **from_body)
    limit = settings.max_faces_limit
    if given.max_faces is not None and given.max_faces > limit:
        where = "body" if "max_faces" in from_body else "query"
        raise ValidationFailed(
            f"{where}.max_faces: {given.max_faces} is over this service's limit of {limit}",
            errors=[
                {
                    "loc": [where, "max_faces"],
                    "msg": f"Input should be less than or equal to {limit}",
                    "type": "less_than_equal",
                }
            ],
        )
    return RequestOptions(
        detect=DetectOptions(
            max_faces=given.max_faces if given.max_faces is not None else settings.default_max_faces,
            min_face_size=given.min_face_size if given.min_face_size is not None else settings.default_min_face_size,
            threshold=given.threshold if given.threshold is not None else settings.default_detection_threshold,
            aligned=bool(given.aligned),
        ),
        poker_face=bool(given.return_poker_face),
        expression_map=bool(given.return_expression_map),
        aligned_face=bool(given.return_aligned_face),
    )


def detect_query(
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
        bool | None,
        Query(description="The upload is already an aligned face crop, square: skip detection."),
    ] = None,
) -> GivenOptions:
    """The detection options of an analysis route's query (each route adds its own)."""
    return GivenOptions(max_faces=max_faces, min_face_size=min_face_size, threshold=threshold, aligned=aligned)


DetectQueryDep = Annotated[GivenOptions, Depends(detect_query)]
