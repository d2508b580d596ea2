"""POST /v1/poker-face: the generated emotionless face of every detected face."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.api.analysis import analyse, b64, face_geometry, model_ref, read_uploads
from service.api.deps import DetectOptionsDep, ImagesField, SettingsDep, StateDep
from service.api.routes.recognize import PROBLEM_RESPONSES
from service.api.schemas import PokerFace, PokerFaceImage, PokerFaceResponse
from service.errors import CapabilityMissing, InvalidRequest, NoFaceFound, NotAcceptable
from service.vision.expression_map import expression_map_png, expression_map_pngs

router = APIRouter(prefix="/v1", tags=["poker faces"])


def wants_png(accept: str | None) -> bool:
    """True when the client asks for image/png rather than JSON; raise 406 for neither."""
    if not accept:
        return False
    types = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            types.append((q, fields[0].lower()))
    types.sort(key=lambda t: -t[0])  # stable: equal q keeps the client's order
    for _, media in types:
        if media in ("application/json", "application/*", "*/*"):
            return False
        if media in ("image/png", "image/*"):
            return True
    raise NotAcceptable(f"cannot answer with {accept!r}; ask for application/json or image/png")


@router.post(
    "/poker-face",
    response_model=PokerFaceResponse,
    responses={**PROBLEM_RESPONSES, 200: {"content": {"image/png": {}}, "description": "JSON, or with `Accept: image/png` the PNG of the largest face"}},
    summary="Generate the poker face (the emotionless face) of every face",
    description=(
        "Returns the generated poker face of each detected face as base64 PNG in JSON. With `Accept: image/png` "
        "and a single upload, the body is the PNG of the largest face alone (422 if there is none). With "
        "`return_expression_map=true` each face also carries its expression map (where the face differs from its poker face, "
        "over the aligned face); with `Accept: image/png` the body is then the expression map of the largest face.\n\n"
        "```\ncurl -F images=@face.jpg -H 'Accept: image/png' -o poker.png http://127.0.0.1:8000/v1/poker-face\n```"
    ),
)
async def poker_face(
    state: StateDep,
    settings: SettingsDep,
    options: DetectOptionsDep,
    images: ImagesField,
    accept: Annotated[str | None, Header()] = None,
    return_expression_map: Annotated[
        bool, Query(description="Add each face's expression map; with Accept: image/png, answer the largest face's map instead of its poker face.")
    ] = False,
) -> Response | PokerFaceResponse:
    png = wants_png(accept)
    if png and len(images) != 1:
        raise InvalidRequest(f"Accept: image/png returns one picture; upload exactly one image (got {len(images)})", field="images")
    model = state.require_pipeline().model
    if not model.has_poker_face:  # refuse before decoding and detecting anything
        raise CapabilityMissing(f"model {model.card.name!r} ships no poker-face graph")
    uploads = await read_uploads(images, settings)
    analysis = await analyse(state, uploads, options, route="/v1/poker-face", recognise=False, poker_face=True)
    assert analysis.poker_pngs is not None
    if png:
        result = analysis.results[0]
        if not result.faces:
            raise NoFaceFound("no face was found in the image")
        largest = max(range(len(result.faces)), key=lambda i: result.faces[i].area)
        headers = {"X-Model": f"{model.card.name}/{model.card.version}"}
        if return_expression_map:
            assert result.poker_faces is not None
            body = await run_in_threadpool(expression_map_png, result.faces[largest].aligned, result.poker_faces[largest])
        else:
            body = analysis.poker_pngs[0][largest]
        return Response(body, media_type="image/png", headers=headers)
    maps = None
    if return_expression_map:
        maps = await run_in_threadpool(lambda: [expression_map_pngs([f.aligned for f in r.faces], r.poker_faces) for r in analysis.results])
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
    return PokerFaceResponse(model=model_ref(state), images=out_images, timings_ms=analysis.timer.as_ms())
