"""What both analysis routes share: reading the images (multipart or base64 JSON), the
request's pixel budget, and running the pipeline off the event loop within the request's
deadline, its place in the queue and its client's patience."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from service import metrics
from service.api.options import GivenOptions
from service.api.problems import validation_failed
from service.api.schemas import FILENAME_MAX_CHARS, Box, JsonImagesRequest, ModelRef, RecognizedFace
from service.api.tracing import access_fields
from service.config import Settings
from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    EmptyUpload,
    ImageTooLarge,
    InternalError,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedBodyType,
    UnsupportedMediaType,
    ValidationFailed,
    WorkAbandoned,
)
from service.pipeline import DetectOptions, Face, FacePipeline, ImageResult, StageTimer
from service.state import ServiceState
from service.vision.imaging import encode_png, probe_size

_MEDIA_TYPES_HINT = (
    "send the images as multipart/form-data (field 'images'), "
    'as application/json ({"images": [{"data": "<base64>"}]}), '
    "or one image as the body itself (Content-Type image/jpeg, image/png, image/webp or image/bmp)"
)

# A body of one of these types is one image, read as an upload is (format by magic bytes).
_RAW_IMAGE_TYPES = ("application/octet-stream",)

# A multipart part's headers that name a file (RFC 7578: ``filename``, or RFC 5987's ``filename*``).
_FILENAME_PARAM = re.compile(rb"filename\*?\s*=", re.IGNORECASE)


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Analysis:
    results: list[ImageResult]
    uploads: list[Upload]
    timings_ms: dict[str, float]
    poker_pngs: list[list[bytes]]  # per image, per face; empty lists when poker faces were not asked for


# --- reading the images ---------------------------------------------------------------------


async def read_images(
    request: Request, settings: Settings, json_model: type[JsonImagesRequest]
) -> tuple[list[Upload], GivenOptions | None]:
    """The request's images, from a multipart form or a base64 JSON body, within the limits.

    Returns the uploads and, for a JSON body, the options it gives. A body whose
    Content-Type is an image type (or application/octet-stream) is one image, with the query's
    options; any other type is a 415 that names the three forms.
    Multipart parts are kept in memory (the body is already in memory, within its limit), so
    no face ever touches the disk and a read-only root file system works. A JSON body is
    parsed and its base64 decoded in a worker thread: up to its limit that is tens of
    milliseconds the event loop (and every other client) would otherwise wait.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        body = await request.body()
        return await asyncio.to_thread(_read_json, body, json_model, settings)
    if media == "multipart/form-data":
        return await _read_multipart(request, settings), None
    if media.startswith("image/") or media in _RAW_IMAGE_TYPES:
        return [Upload(filename=None, data=await request.body())], None
    if not media:
        raise ValidationFailed(
            f"body.images: Field required; {_MEDIA_TYPES_HINT}",
            errors=[{"loc": ["body", "images"], "msg": f"Field required; {_MEDIA_TYPES_HINT}", "type": "missing"}],
        )
    raise UnsupportedBodyType(f"a request body of type {media[:100]!r} is not read; {_MEDIA_TYPES_HINT}")


def _read_json(
    body: bytes, json_model: type[JsonImagesRequest], settings: Settings
) -> tuple[list[Upload], GivenOptions]:
    """Parse and validate a JSON body, then decode its images (in a worker thread)."""
    _check_json_shape(body, settings.max_images)
    try:
        parsed = json_model.model_validate_json(body, context={"max_images": settings.max_images})
    except ValidationError as exc:
        raise validation_failed(exc.errors(include_url=False, include_input=False), prefix=("body",)) from None
    uploads = [
        Upload(filename=image.filename, data=_b64decode(image.data, index)) for index, image in enumerate(parsed.images)
    ]
    _check_count(len(uploads), settings)
    decoded = sum(len(u.data) for u in uploads)
    if decoded > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the images decode to {decoded} bytes; the limit is {settings.max_upload_bytes}",
            limit_bytes=settings.max_upload_bytes,
        )
    return uploads, GivenOptions.from_body(parsed)


def _check_json_shape(body: bytes, max_images: int) -> None:
    """Refuse, before parsing, a body with more JSON objects and arrays than any valid request
    has: the top object, the ``images`` array, one object per image and at most every
    character of each file name. A body of a million empty items would otherwise become a
    million Python objects (and as many errors) before the item count is checked."""
    containers = body.count(b"{") + body.count(b"[")
    bound = 2 + max_images * (1 + FILENAME_MAX_CHARS)
    if containers > bound:
        raise ValidationFailed(
            f"body: {containers} JSON objects and arrays; a request of at most {max_images} images has at most {bound}",
            errors=[
                {
                    "loc": ["body"],
                    "msg": f"more JSON objects and arrays than a request of at most {max_images} images can hold",
                    "type": "too_long",
                }
            ],
        )


def _b64decode(text: str, index: int) -> bytes:
    loc = ["body", "images", index, "data"]

    def invalid(msg: str) -> ValidationFailed:
        return ValidationFailed(
            f"body.images.{index}.data: {msg}", errors=[{"loc": loc, "msg": msg, "type": "value_error"}]
        )

    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise invalid("a data: URI must be base64 encoded (data:<media type>;base64,<data>)")
    elif text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise invalid("URLs are not fetched; send the image's bytes in base64")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("not valid base64") from None


async def _read_multipart(request: Request, settings: Settings) -> list[Upload]:
    # The middleware has the whole body in memory already; splitting it into parts is pure
    # Python work in proportion to its size, so it is done in a worker thread.
    body = await request.body()
    return await asyncio.to_thread(_parse_multipart, request.headers, body, settings)


def _parse_multipart(headers: Headers, body: bytes, settings: Settings) -> list[Upload]:
    """The uploads of a multipart body (in a worker thread, on an event loop of its own)."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    files = _file_parts(body, headers.get("content-type", ""))
    if files > settings.max_images:
        raise InvalidRequest(
            f"{files} images uploaded; at most {settings.max_images} per request",
            field="images",
        )

    async def parse() -> list[Upload]:
        # Starlette's own bound on file parts stays, behind the count above.
        parser = MultiPartParser(headers, chunks(), max_files=settings.max_images, max_fields=32)
        # Every part in memory: SpooledTemporaryFile rolls over to disk only above this size,
        # and no part can be larger than the body, which is already in memory.
        parser.spool_max_size = settings.max_upload_bytes + 1
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"the multipart body could not be parsed: {exc.message}") from None
        try:
            items = form.getlist("images")
            files = [item for item in items if not isinstance(item, str)]
            if not items or len(files) != len(items):
                msg = "Field required" if not items else "Expected a file, got text"
                raise ValidationFailed(
                    f"body.images: {msg}",
                    errors=[{"loc": ["body", "images"], "msg": msg, "type": "missing" if not items else "value_error"}],
                )
            _check_count(len(files), settings)
            return [Upload(filename=f.filename, data=f.file.read()) for f in files]
        finally:
            await form.close()

    return asyncio.run(parse())


def _file_parts(body: bytes, content_type: str) -> int:
    """How many parts of a multipart body carry a file (their headers name a ``filename``).

    Counted on the bytes, before any part is built: a part's headers follow its delimiter
    line, which the part's content cannot hold (RFC 2046), so the count is exact for a
    well-formed body; a malformed one is left to the parser to refuse. 0 without a boundary.
    """
    _, _, params = content_type.partition(";")
    boundary = ""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return 0
    delimiter = b"--" + boundary.encode("latin-1") + b"\r\n"
    count = 0
    pos = body.find(delimiter)
    while pos >= 0 and (pos == 0 or body[pos - 2 : pos] == b"\r\n"):
        start = pos + len(delimiter)
        end = body.find(b"\r\n\r\n", start)
        if end < 0:
            break
        count += _FILENAME_PARAM.search(body, start, end) is not None
        pos = body.find(b"\r\n" + delimiter, end)
        pos = pos + 2 if pos >= 0 else -1
    return count


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise EmptyUpload("no image was uploaded; send one or more images")
    if count > settings.max_images:
        raise InvalidRequest(f"{count} images uploaded; at most {settings.max_images} per request", field="images")


def check_pixel_budget(uploads: list[Upload], *, max_image_pixels: int, max_request_pixels: int) -> None:
    """Refuse a request whose images together declare more than ``max_request_pixels``.

    Read from each file's header, with its format allow-listed and its structure bounded
    first (``service.vision.imaging.probe_size``), before anything is decoded; runs in the
    request's worker thread, after its place in the queue. A file whose header cannot be read
    counts nothing here; decoding it names the fault.
    """
    total = 0
    for upload in uploads:
        try:
            width, height = probe_size(upload.data, max_pixels=max_image_pixels)
        except (InvalidImage, UnsupportedMediaType, EmptyUpload, ImageTooLarge):
            continue
        total += width * height
    if total > max_request_pixels:
        raise ImageTooLarge(
            f"the request's images have {total} pixels together; the limit is {max_request_pixels} per request",
            limit_pixels=max_request_pixels,
        )


# --- running the pipeline -------------------------------------------------------------------


@dataclass
class AbandonableTimer(StageTimer):
    """A stage timer that stops the worker thread at the next stage once the request is given up."""

    abandoned: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def abandon(self, reason: str) -> None:
        self.reason = reason
        self.abandoned.set()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.abandoned.is_set():
            raise WorkAbandoned(f"stopped before {name}: {self.reason}")
        with super().stage(name):
            yield


def _analyse_sync(
    pipeline: FacePipeline,
    uploads: list[Upload],
    options: DetectOptions,
    timer: AbandonableTimer,
    *,
    max_request_pixels: int,
    recognise: bool,
    poker_face: bool,
) -> tuple[list[ImageResult], list[list[bytes]]]:
    # The headers first (the request's pixel budget), then each photo is decoded, searched
    # and released in turn inside the pipeline.
    with timer.stage("decode"):
        check_pixel_budget(uploads, max_image_pixels=pipeline.max_image_pixels, max_request_pixels=max_request_pixels)
    results = pipeline.run(
        [u.data for u in uploads],
        options,
        timer,
        recognise=recognise,
        poker_face=poker_face,
        names=[u.filename for u in uploads],
    )
    pngs: list[list[bytes]] = [[] for _ in results]
    if poker_face:
        with timer.stage("encode"):
            pngs = [[encode_png(p) for p in (r.poker_faces if r.poker_faces is not None else [])] for r in results]
    return results, pngs


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read already, so the next message
    the server sends the application is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _count_abandoned(timer: AbandonableTimer) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and isinstance(task.exception(), WorkAbandoned):
            metrics.ABANDONED.labels(reason=timer.reason).inc()

    return done


async def analyse(
    request: Request,
    state: ServiceState,
    pipeline: FacePipeline,
    uploads: list[Upload],
    options: DetectOptions,
    *,
    route: str,
    recognise: bool,
    poker_face: bool,
) -> Analysis:
    """Queue for a computing slot, then check the request's pixel budget and run the
    pipeline in a worker thread, within the request's deadline (queue wait included) and only
    while the client still waits. Nothing here parses the images on the event loop.

    Raises:
        QueueFull: the waiting line is full (503).
        DeadlineExceeded: no answer within ``request_timeout_s`` (504).
        ClientDisconnected: the client left; the work stops at the next stage.
    """
    settings = state.settings
    start = time.perf_counter()
    deadline = start + settings.request_timeout_s
    timer = AbandonableTimer()

    async def admitted() -> tuple[list[ImageResult], list[list[bytes]]]:
        timer.seconds["queue"] = await state.scheduler.admit(deadline - time.perf_counter())
        worker = state.scheduler.start_computing(
            _analyse_sync,
            pipeline,
            uploads,
            options,
            timer,
            max_request_pixels=settings.max_request_pixels,
            recognise=recognise,
            poker_face=poker_face,
        )
        worker.add_done_callback(_count_abandoned(timer))
        return await asyncio.shield(worker)  # a cancelled request leaves the thread to stop itself

    work = asyncio.ensure_future(admitted())
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait(
            {work, gone}, timeout=max(0.0, deadline - time.perf_counter()), return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        # The server gave up on this request (shutdown past its grace period): stop the work
        # too, or the process would wait for it to finish before it can exit.
        work.cancel()
        timer.abandon("shutdown")
        raise
    finally:
        gone.cancel()
    if work not in done:
        work.cancel()
        if gone in done:
            timer.abandon("disconnect")
            raise ClientDisconnected("the client closed the connection before the answer was ready")
        timer.abandon("deadline")
        raise DeadlineExceeded(f"the request did not finish within the deadline of {settings.request_timeout_s:g} s")
    results, pngs = work.result()
    timer.observe()
    timer.seconds["total"] = time.perf_counter() - start
    faces = sum(len(r.faces) for r in results)
    metrics.IMAGES.labels(route=route).inc(len(results))
    metrics.FACES.labels(route=route).inc(faces)
    timings_ms = timer.as_ms()
    model = pipeline.model
    access_fields(request.scope).update(
        images=len(results),
        faces=faces,
        timings_ms=timings_ms,
        model=f"{model.card.name}/{model.card.version}",
        provider=model.provider,
    )
    return Analysis(results=results, uploads=uploads, timings_ms=timings_ms, poker_pngs=pngs)


# --- building the answer --------------------------------------------------------------------


def model_ref(pipeline: FacePipeline) -> ModelRef:
    card = pipeline.model.card
    return ModelRef(name=card.name, version=card.version, provider=pipeline.model.provider)


def face_geometry(face: Face) -> dict[str, Any]:
    x1, y1, x2, y2 = face.box
    return {
        "box": Box(x1=round(x1, 2), y1=round(y1, 2), x2=round(x2, 2), y2=round(y2, 2)),
        "score": None if face.score is None else round(face.score, 6),
        "landmarks": None
        if face.landmarks is None
        else [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def recognized_faces(
    result: ImageResult, labels: Sequence[str], pngs: Mapping[str, Sequence[bytes]] | None = None
) -> list[RecognizedFace]:
    """One image's faces as ``/v1/recognize`` answers them: geometry, label, probabilities and
    raw logits, plus per face the PNGs in ``pngs`` (field name -> one PNG per face), in base64.

    ``pfvit-batch`` builds its rows with this function too, so its rows and the API's answers
    cannot drift apart.
    """
    if result.logits is None or result.probabilities is None:
        raise InternalError("recognized_faces: recognition was not run on this image")
    pngs = pngs or {}

    def png(key: str, i: int) -> str | None:
        per_face = pngs.get(key)
        return None if per_face is None else b64(per_face[i])

    faces = []
    for i, face in enumerate(result.faces):
        probs = result.probabilities[i]
        faces.append(
            RecognizedFace(
                **face_geometry(face),
                label=labels[int(probs.argmax())],
                probabilities={label: round(float(p), 6) for label, p in zip(labels, probs)},
                logits=[float(v) for v in result.logits[i]],
                poker_face_png=png("poker_face_png", i),
                expression_map_png=png("expression_map_png", i),
                aligned_face_png=png("aligned_face_png", i),
            )
        )
    return faces
