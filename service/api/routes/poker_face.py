"""POST /v1/poker-face: the generated emotionless face of every detected face."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import mimeparse
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.api.analysis import analyse, b64, face_geometry, model_ref, read_images
from service.api.deps import PipelineDep, SettingsDep, StateDep
from service.api.openapi import ANALYSIS_ERRORS, POKER_FACE_EXAMPLE, problem_responses
from service.api.options import DetectQueryDep, GivenOptions, resolve_options
from service.api.schemas import JsonPokerFaceRequest, PokerFace, PokerFaceImage, PokerFaceResponse
from service.errors import CapabilityMissing, InternalError, InvalidRequest, NoFaceFound, NotAcceptable
from service.vision.expression_map import expression_map_png, expression_map_pngs

router = APIRouter(prefix="/v1", tags=["poker faces"])


# Offered answers; on a tie (``*/*``) the last one wins, so JSON is the default.
_OFFERED = ["image/png", "application/json"]


def wants_png(accept: str | None) -> bool:
    """True when the client asks for image/png rather than JSON; raise 406 for neither."""
    if not accept or not accept.strip():
        return False
    try:
        best = mimeparse.best_match(_OFFERED, accept)
    except mimeparse.MimeTypeParseException:
        best = ""
    if not best:
        raise NotAcceptable(f"cannot answer with {accept[:100]!r}; ask for application/json or image/png")
    return bool(best == "image/png")


def poker_face_query(
    detect: DetectQueryDep,
    return_expression_map: Annotated[
        bool,
        Query(
            description=(
                "Add each face's expression map; with Accept: image/png, answer the largest face's "
                "map instead of its poker face."
            )
        ),
    ] = False,
) -> GivenOptions:
    """The options of ``/v1/poker-face``'s query."""
    return dataclasses.replace(detect, return_expression_map=return_expression_map)


@router.post(
    "/poker-face",
    response_model=PokerFaceResponse,
    responses={
        200: {
            "description": "JSON, or with `Accept: image/png` the PNG of the largest face (or of its expression map)",
            "content": {
                "application/json": {"example": POKER_FACE_EXAMPLE},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **problem_responses(*ANALYSIS_ERRORS, 406, 501),
    },
    summary="Generate the poker face (the emotionless face) of every face",
    description=(
        "Returns the generated poker face of each detected face as base64 PNG in JSON. With `Accept: image/png` "
        "and a single upload, the body is the PNG of the largest face alone (422 if there is none). With "
        "`return_expression_map=true` each face also carries its expression map (where the face differs from "
        "its poker face, "
        "over the aligned face); with `Accept: image/png` the body is then the expression map of the largest face. "
        "Takes the same inputs as `/v1/recognize` (multipart, base64 JSON, or one image as the body).\n\n"
        "```\ncurl -F images=@face.jpg -H 'Accept: image/png' -o poker.png http://127.0.0.1:8000/v1/poker-face\n```"
    ),
)
async def poker_face(
    request: Request,
    pipeline: PipelineDep,
    state: StateDep,
    settings: SettingsDep,
    query: Annotated[GivenOptions, Depends(poker_face_query)],
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response | PokerFaceResponse:
    model = pipeline.model
    if not model.has_poker_face:  # refuse before reading, decoding and detecting anything
        raise CapabilityMissing(f"model {model.card.name!r} ships no poker-face graph")
    png = wants_png(accept)
    uploads, body = await read_images(request, settings, JsonPokerFaceRequest)
    if png and len(uploads) != 1:
        raise InvalidRequest(
            f"Accept: image/png returns one picture; upload exactly one image (got {len(uploads)})", field="images"
        )
    options = resolve_options(settings, query, body)
    with_map = options.expression_map
    analysis = await analyse(
        request, state, pipeline, uploads, options.detect, route="/v1/poker-face", recognise=False, poker_face=True
    )
    if png:
        result = analysis.results[0]
        if not result.faces:
            raise NoFaceFound("no face was found in the image")
        largest = max(range(len(result.faces)), key=lambda i: result.faces[i].area)
        headers = {"X-Model": f"{model.card.name}/{model.card.version}"}
        if with_map:
            if result.poker_faces is None:
                raise InternalError("/v1/poker-face: the pipeline returned no poker faces")
            body_png = await run_in_threadpool(
                expression_map_png, result.faces[largest].aligned, result.poker_faces[largest]
            )
        else:
            body_png = analysis.poker_pngs[0][largest]
        return Response(body_png, media_type="image/png", headers=headers)
    maps = None
    if with_map:
        maps = await run_in_threadpool(
            lambda: [expression_map_pngs([f.aligned for f in r.faces], r.poker_faces) for r in analysis.results]
        )
    out_images = [
        PokerFaceImage(
            index=index,
            filename=upload.filename,
            width=result.width,
            height=result.height,
            faces=[
                PokerFace(
                    **face_geometry(face),
                    poker_face_png=b64(analysis.poker_pngs[index][i]),
                    expression_map_png=b64(maps[index][i]) if maps is not None else None,
                )
                for i, face in enumerate(result.faces)
            ],
        )
        for index, (upload, result) in enumerate(zip(analysis.uploads, analysis.results))
    ]
    return PokerFaceResponse(model=model_ref(pipeline), images=out_images, timings_ms=analysis.timings_ms)
