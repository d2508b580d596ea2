"""POST /v1/poker-face: the generated emotionless face of every detected face."""

from __future__ import annotations

from typing import Annotated

import mimeparse
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service.api.analysis import analyse, b64, check_pixel_budget, face_geometry, model_ref, read_images
from service.api.deps import PipelineDep, QueryOptionsDep, SettingsDep, StateDep, resolve_options
from service.api.openapi import ANALYSIS_ERRORS, POKER_FACE_EXAMPLE, problem_responses
from service.api.schemas import JsonPokerFaceRequest, PokerFace, PokerFaceImage, PokerFaceResponse
from service.errors import CapabilityMissing, InvalidRequest, NoFaceFound, NotAcceptable

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
    return best == "image/png"


@router.post(
    "/poker-face",
    response_model=PokerFaceResponse,
    responses={
        200: {
            "description": "JSON, or with `Accept: image/png` the PNG of the largest face",
            "content": {"application/json": {"example": POKER_FACE_EXAMPLE}, "image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(*ANALYSIS_ERRORS, 406, 501),
    },
    summary="Generate the poker face (the emotionless face) of every face",
    description=(
        "Returns the generated poker face of each detected face as base64 PNG in JSON. With `Accept: image/png` "
        "and a single upload, the body is the PNG of the largest face alone (422 if there is none). "
        "Takes the same inputs as `/v1/recognize` (multipart or base64 JSON).\n\n"
        "```\ncurl -F images=@face.jpg -H 'Accept: image/png' -o poker.png http://127.0.0.1:8000/v1/poker-face\n```"
    ),
)
async def poker_face(
    request: Request,
    pipeline: PipelineDep,
    state: StateDep,
    settings: SettingsDep,
    query: QueryOptionsDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response | PokerFaceResponse:
    model = pipeline.model
    if not model.has_poker_face:  # refuse before reading, decoding and detecting anything
        raise CapabilityMissing(f"model {model.card.name!r} ships no poker-face graph")
    png = wants_png(accept)
    uploads, body = await read_images(request, settings, JsonPokerFaceRequest)
    if png and len(uploads) != 1:
        raise InvalidRequest(f"Accept: image/png returns one picture; upload exactly one image (got {len(uploads)})", field="images")
    options = resolve_options(settings, query, body)
    check_pixel_budget(uploads, settings.max_request_pixels)
    analysis = await analyse(request, state, pipeline, uploads, options, route="/v1/poker-face", recognise=False, poker_face=True)
    if png:
        result = analysis.results[0]
        if not result.faces:
            raise NoFaceFound("no face was found in the image")
        largest = max(range(len(result.faces)), key=lambda i: result.faces[i].area)
        headers = {"X-Model": f"{model.card.name}/{model.card.version}"}
        return Response(analysis.poker_pngs[0][largest], media_type="image/png", headers=headers)
    out_images = [
        PokerFaceImage(
            index=index,
            filename=upload.filename,
            width=result.width,
            height=result.height,
            faces=[PokerFace(**face_geometry(face), poker_face_png=b64(analysis.poker_pngs[index][i])) for i, face in enumerate(result.faces)],
        )
        for index, (upload, result) in enumerate(zip(analysis.uploads, analysis.results))
    ]
    return PokerFaceResponse(model=model_ref(pipeline), images=out_images, timings_ms=analysis.timings_ms)
