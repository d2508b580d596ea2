"""POST /v1/recognize: per-face emotion logits and probabilities."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.api.analysis import Analysis, analyse, b64, face_geometry, model_ref, read_uploads
from service.api.deps import DetectOptionsDep, ImagesField, SettingsDep, StateDep
from service.api.problems import PROBLEM_JSON
from service.api.schemas import RecognizedFace, RecognizedImage, RecognizeResponse
from service.vision.expression_map import expression_map_pngs
from service.vision.imaging import encode_png

router = APIRouter(prefix="/v1", tags=["emotions"])

PROBLEM_RESPONSES = {
    status: {"description": desc, "content": {PROBLEM_JSON: {"example": {"type": "https://pfvit.dev/problems/" + slug, "title": title, "status": status, "detail": detail}}}}
    for status, desc, slug, title, detail in [
        (400, "Empty upload, or more images than the service takes per request", "empty-upload", "Empty upload", "image 0 (a.jpg): the uploaded file is empty"),
        (413, "Upload or image too large", "image-too-large", "Image has too many pixels", "image is 30000x30000 = 900000000 pixels; the limit is 40000000"),
        (415, "Image format not accepted", "unsupported-media-type", "Unsupported image format", "image format GIF is not accepted; send JPEG, PNG, WebP or BMP"),
        (422, "Not an image or truncated (invalid-image); a missing field or an invalid option (validation-error)", "invalid-image", "Invalid image", "image data is truncated or corrupt"),
        (503, "Models still loading", "not-ready", "Models are not loaded yet", "models are still loading and warming up; retry shortly"),
    ]
}


def _face_pngs(analysis: Analysis, *, maps: bool, aligned: bool) -> dict[str, list[list[bytes]]]:
    """Per image, per face: the expression-map and aligned-crop PNGs asked for (off the event loop).

    Their time is added to the response's ``encode`` and ``total``.
    """
    start = time.perf_counter()
    out: dict[str, list[list[bytes]]] = {}
    if maps:
        out["expression_map_png"] = [expression_map_pngs([f.aligned for f in r.faces], r.poker_faces) for r in analysis.results]
    if aligned:
        out["aligned_face_png"] = [[encode_png(f.aligned) for f in r.faces] for r in analysis.results]
    if out:
        spent = time.perf_counter() - start
        for stage in ("encode", "total"):
            analysis.timer.seconds[stage] = analysis.timer.seconds.get(stage, 0.0) + spent
    return out


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    responses=PROBLEM_RESPONSES,
    summary="Recognise the emotion of every face",
    description=(
        "Detects faces (MTCNN), aligns each to the model's 5-point template and classifies its emotion with PF-ViT. "
        "All faces of the request go through the model in one batch. An image without a face gives an empty `faces` list.\n\n"
        "```\ncurl -F images=@face.jpg 'http://127.0.0.1:8000/v1/recognize?max_faces=5'\n```"
    ),
)
async def recognize(
    state: StateDep,
    settings: SettingsDep,
    options: DetectOptionsDep,
    images: ImagesField,
    return_poker_face: bool = False,
    return_expression_map: Annotated[bool, Query(description="Per face, a PNG heatmap of where the face differs from its poker face, over the aligned face.")] = False,
    return_aligned_face: Annotated[bool, Query(description="Per face, the aligned crop the model saw, as PNG.")] = False,
) -> RecognizeResponse:
    uploads = await read_uploads(images, settings)
    analysis = await analyse(
        state, uploads, options, route="/v1/recognize", recognise=True, poker_face=return_poker_face or return_expression_map
    )
    labels = state.require_pipeline().model.labels
    extra_pngs = await run_in_threadpool(_face_pngs, analysis, maps=return_expression_map, aligned=return_aligned_face)
    out_images = []
    for index, (upload, result) in enumerate(zip(analysis.uploads, analysis.results)):
        faces = []
        for i, face in enumerate(result.faces):
            assert result.logits is not None and result.probabilities is not None
            probs = result.probabilities[i]
            extras = {key: b64(pngs[index][i]) for key, pngs in extra_pngs.items()}
            faces.append(
                RecognizedFace(
                    **face_geometry(face),
                    label=labels[int(probs.argmax())],
                    probabilities={label: round(float(p), 6) for label, p in zip(labels, probs)},
                    logits=[float(v) for v in result.logits[i]],
                    poker_face_png=b64(analysis.poker_pngs[index][i]) if return_poker_face and analysis.poker_pngs is not None else None,
                    **extras,
                )
            )
        out_images.append(RecognizedImage(index=index, filename=upload.filename, width=result.width, height=result.height, faces=faces))
    return RecognizeResponse(model=model_ref(state), labels=labels, images=out_images, timings_ms=analysis.timer.as_ms())
