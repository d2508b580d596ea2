"""POST /v1/recognize: per-face emotion logits and probabilities."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.api.analysis import analyse, b64, check_pixel_budget, face_geometry, model_ref, read_images
from service.api.deps import PipelineDep, QueryOptionsDep, SettingsDep, StateDep, resolve_options
from service.api.openapi import ANALYSIS_ERRORS, RECOGNIZE_EXAMPLE, ok_example, problem_responses
from service.api.schemas import JsonRecognizeRequest, RecognizedFace, RecognizedImage, RecognizeResponse
from service.errors import CapabilityMissing

router = APIRouter(prefix="/v1", tags=["emotions"])


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    responses={**ok_example(RECOGNIZE_EXAMPLE), **problem_responses(*ANALYSIS_ERRORS, 501)},
    summary="Recognise the emotion of every face",
    description=(
        "Detects faces (MTCNN), aligns each to the model's 5-point template and classifies its emotion with PF-ViT. "
        "All faces of the request go through the model in one batch. An image without a face gives an empty `faces` list.\n\n"
        "Send the images as `multipart/form-data` (field `images`, repeated), or as `application/json` with base64 data "
        "(options may then also be given in the body, where they win over the query).\n\n"
        "```\ncurl -F images=@face.jpg 'http://127.0.0.1:8000/v1/recognize?max_faces=5'\n"
        "curl -H 'Content-Type: application/json' -d '{\"images\": [{\"data\": \"'$(base64 -w0 face.jpg)'\"}]}' "
        "http://127.0.0.1:8000/v1/recognize\n```"
    ),
)
async def recognize(
    request: Request,
    pipeline: PipelineDep,
    state: StateDep,
    settings: SettingsDep,
    query: QueryOptionsDep,
    return_poker_face: Annotated[bool, Query(description="Also return each face's poker face as base64 PNG.")] = False,
) -> RecognizeResponse:
    model = pipeline.model
    uploads, body = await read_images(request, settings, JsonRecognizeRequest)
    options = resolve_options(settings, query, body)
    with_poker_face = body.return_poker_face if body is not None and body.return_poker_face is not None else return_poker_face
    if with_poker_face and not model.has_poker_face:  # decided before anything is decoded or detected
        raise CapabilityMissing(f"model {model.card.name!r} ships no poker-face graph; ask without return_poker_face")
    check_pixel_budget(uploads, settings.max_request_pixels)
    analysis = await analyse(request, state, pipeline, uploads, options, route="/v1/recognize", recognise=True, poker_face=with_poker_face)
    labels = model.labels
    out_images = []
    for index, (upload, result) in enumerate(zip(analysis.uploads, analysis.results)):
        faces = []
        pngs = analysis.poker_pngs[index]
        for i, face in enumerate(result.faces):
            assert result.logits is not None and result.probabilities is not None
            probs = result.probabilities[i]
            faces.append(
                RecognizedFace(
                    **face_geometry(face),
                    label=labels[int(probs.argmax())],
                    probabilities={label: round(float(p), 6) for label, p in zip(labels, probs)},
                    logits=[float(v) for v in result.logits[i]],
                    poker_face_png=b64(pngs[i]) if with_poker_face else None,
                )
            )
        out_images.append(RecognizedImage(index=index, filename=upload.filename, width=result.width, height=result.height, faces=faces))
    return RecognizeResponse(model=model_ref(pipeline), labels=labels, images=out_images, timings_ms=analysis.timings_ms)
