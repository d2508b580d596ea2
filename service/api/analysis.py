"""What both analysis routes share: reading uploads, running the pipeline off the event loop."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from service import metrics
from service.api.schemas import Box, ModelRef
from service.config import Settings
from service.errors import EmptyUpload, InvalidRequest
from service.pipeline import DetectOptions, Face, ImageResult, StageTimer
from service.state import ServiceState
from service.vision.imaging import encode_png


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass
class Analysis:
    results: list[ImageResult]
    uploads: list[Upload]
    timer: StageTimer
    poker_pngs: list[list[bytes]] | None  # per image, per face


async def read_uploads(files: list[UploadFile], settings: Settings) -> list[Upload]:
    if not files:
        raise EmptyUpload("no image was uploaded; send one or more files in the 'images' field")
    if len(files) > settings.max_images:
        raise InvalidRequest(f"{len(files)} images uploaded; at most {settings.max_images} per request", field="images")
    return [Upload(filename=f.filename, data=await f.read()) for f in files]


def _analyse_sync(state: ServiceState, uploads: list[Upload], options: DetectOptions, *, recognise: bool, poker_face: bool) -> Analysis:
    pipeline = state.require_pipeline()
    timer = StageTimer()
    results = pipeline.run(
        [u.data for u in uploads], options, timer, recognise=recognise, poker_face=poker_face, names=[u.filename for u in uploads]
    )
    pngs = None
    if poker_face:
        with timer.stage("encode"):
            pngs = [[encode_png(p) for p in (r.poker_faces if r.poker_faces is not None else [])] for r in results]
    return Analysis(results=results, uploads=uploads, timer=timer, poker_pngs=pngs)


async def analyse(state: ServiceState, uploads: list[Upload], options: DetectOptions, *, route: str, recognise: bool, poker_face: bool) -> Analysis:
    """Run the pipeline in a worker thread, at most ``max_concurrent_inference`` at once."""
    state.require_pipeline()  # answer 503 before queueing when not ready
    start = time.perf_counter()
    async with state.gate:
        analysis = await run_in_threadpool(_analyse_sync, state, uploads, options, recognise=recognise, poker_face=poker_face)
    analysis.timer.observe()
    analysis.timer.seconds["total"] = time.perf_counter() - start
    metrics.IMAGES.labels(route=route).inc(len(analysis.results))
    metrics.FACES.labels(route=route).inc(sum(len(r.faces) for r in analysis.results))
    return analysis


def model_ref(state: ServiceState) -> ModelRef:
    pipeline = state.require_pipeline()
    card = pipeline.model.card
    return ModelRef(name=card.name, version=card.version, provider=pipeline.model.provider)


def face_geometry(face: Face) -> dict:
    x1, y1, x2, y2 = face.box
    return {
        "box": Box(x1=round(x1, 2), y1=round(y1, 2), x2=round(x2, 2), y2=round(y2, 2)),
        "score": None if face.score is None else round(face.score, 6),
        "landmarks": None if face.landmarks is None else [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
