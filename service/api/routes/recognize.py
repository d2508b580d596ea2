"""POST /v1/recognize: per-face emotion logits and probabilities."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from service.api.analysis import Analysis, analyse, model_ref, read_images, recognized_faces
from service.api.deps import PipelineDep, SettingsDep, StateDep
from service.api.openapi import ANALYSIS_ERRORS, RECOGNIZE_EXAMPLE, ok_example, problem_responses
from service.api.options import DetectQueryDep, GivenOptions, resolve_options
from service.api.schemas import JsonRecognizeRequest, RecognizedImage, RecognizeResponse
from service.errors import CapabilityMissing
from service.vision.expression_map import expression_map_pngs
from service.vision.imaging import encode_png

router = APIRouter(prefix="/v1", tags=["emotions"])


def _face_pngs(analysis: Analysis, *, maps: bool, aligned: bool) -> dict[str, list[list[bytes]]]:
    """Per image, per face: the expression-map and aligned-crop PNGs asked for (off the event loop).

    Their time is added to the response's ``encode`` and ``total``.
    """
    start = time.perf_counter()
    out: dict[str, list[list[bytes]]] = {}
    if maps:
        out["expression_map_png"] = [
            expression_map_pngs([f.aligned for f in r.faces], r.poker_faces) for r in analysis.results
        ]
    if aligned:
        out["aligned_face_png"] = [[encode_png(f.aligned) for f in r.faces] for r in analysis.results]
    if out:
        spent_ms = (time.perf_counter() - start) * 1000.0
        for stage in ("encode", "total"):
            analysis.timings_ms[stage] = round(analysis.timings_ms.get(stage, 0.0) + spent_ms, 3)
    return out


def recognize_query(
    detect: DetectQueryDep,
    return_poker_face: Annotated[bool, Query(description="Also return each face's poker face as base64 PNG.")] = False,
    return_expression_map: Annotated[
        bool,
        Query(
            description="Per face, a PNG heatmap of where the face differs from its poker face, over the aligned face."
        ),
    ] = False,
    return_aligned_face: Annotated[
        bool, Query(description="Per face, the aligned crop the model saw, as PNG.")
    ] = False,
) -> GivenOptions:
    """The options of ``/v1/recognize``'s query."""
    return dataclasses.replace(
        detect,
        return_poker_face=return_poker_face,
        return_expression_map=return_expression_map,
        return_aligned_face=return_aligned_face,
    )


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    responses={**ok_example(RECOGNIZE_EXAMPLE), **problem_responses(*ANALYSIS_ERRORS, 501)},
    summary="Recognise the emotion of every face",
    description=(
        "Detects faces (MTCNN), aligns each to the model's 5-point template and classifies its emotion with PF-ViT. "
        "All faces of the request go through the model in one batch. An image without a face gives an empty "
        "`faces` list.\n\n"
        "Send the images as `multipart/form-data` (field `images`, repeated), or as `application/json` with "
        "base64 data "
        "(options may then also be given in the body, where they win over the query), or one image as the body "
        "itself with its image type as Content-Type (options in the query).\n\n"
        "```\ncurl -F images=@face.jpg 'http://127.0.0.1:8000/v1/recognize?max_faces=5'\n"
        "curl -H 'Content-Type: application/json' -d '{\"images\": [{\"data\": \"'$(base64 -w0 face.jpg)'\"}]}' "
        "http://127.0.0.1:8000/v1/recognize\n"
        "curl -H 'Content-Type: image/jpeg' --data-binary @face.jpg http://127.0.0.1:8000/v1/recognize\n```"
    ),
)
async def recognize(
    request: Request,
    pipeline: PipelineDep,
    state: StateDep,
    settings: SettingsDep,
    query: Annotated[GivenOptions, Depends(recognize_query)],
) -> RecognizeResponse:
    model = pipeline.model
    uploads, body = await read_images(request, settings, JsonRecognizeRequest)
    options = resolve_options(settings, query, body)
    with_poker_face, with_map = options.poker_face, options.expression_map
    if (with_poker_face or with_map) and not model.has_poker_face:  # decided before anything is decoded or detected
        raise CapabilityMissing(
            f"model {model.card.name!r} ships no poker-face graph; ask without return_poker_face and "
            "return_expression_map"
        )
    analysis = await analyse(
        request,
        state,
        pipeline,
        uploads,
        options.detect,
        route="/v1/recognize",
        recognise=True,
        poker_face=with_poker_face or with_map,
    )
    extra_pngs = await run_in_threadpool(_face_pngs, analysis, maps=with_map, aligned=options.aligned_face)
    labels = model.labels
    out_images = []
    for index, (upload, result) in enumerate(zip(analysis.uploads, analysis.results)):
        pngs = {key: per_image[index] for key, per_image in extra_pngs.items()}
        if with_poker_face:
            pngs["poker_face_png"] = analysis.poker_pngs[index]
        faces = recognized_faces(result, labels, pngs)
        out_images.append(
            RecognizedImage(
                index=index, filename=upload.filename, width=result.width, height=result.height, faces=faces
            )
        )
    return RecognizeResponse(
        model=model_ref(pipeline), labels=labels, images=out_images, timings_ms=analysis.timings_ms
    )
