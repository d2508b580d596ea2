"""HTTP clients for the PF-ViT service: ``PFViTClient`` (blocking) and ``AsyncPFViTClient``.

Both send inputs in chunks that fit the server's limits (``GET /v1/limits``), retry 503 (models
loading) honouring ``Retry-After``, and carry on past inputs the service refuses: such an
input comes back as an ``ImageResult`` with ``error`` set while the rest of its chunk is sent
again without it. Building requests and reading answers is shared; the two classes differ only
in how they wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from pfvit_client.types import Box, Face, ImageResult, Limits, ModelRef, Problem

DEFAULT_URL = "http://127.0.0.1:8000"
# An input is a file path, an (H, W, 3) uint8 RGB array, or encoded image bytes.
ImageInput = str | os.PathLike[str] | np.ndarray | bytes

MULTIPART_OVERHEAD_BYTES = 512  # per file part: boundary and headers, generously
RETRY_STATUSES = (503,)
# Answers about the request as a whole, never about one image: no input would fare better alone.
# Problem types about the service or the request as a whole (its key, route, Accept header or
# options): no image on its own would fare better, so the client stops with ServiceError.
SERVICE_LEVEL_TYPES = frozenset(
    {"unauthorized", "not-found", "method-not-allowed", "not-acceptable", "capability-missing", "validation-error"}
)
# The same for an answer without a problem type of ours (a proxy's, say): by its status.
SERVICE_LEVEL_STATUSES = (401, 403, 404, 405, 406)


class ServiceError(RuntimeError):
    """The service could not be used at all: it kept answering 503, or refused every request
    (401, 403, 404, 405, 406)."""


def encode_array(image: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """``(H, W, 3) uint8`` RGB -> PNG (lossless) or JPEG bytes."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"arrays must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class _Item:
    index: int
    source: str
    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.data)


def _prepare_all(inputs: Iterable[ImageInput], metas: Iterable[dict[str, Any]] | None) -> Iterator[_Item | ImageResult]:
    """Every input read lazily, with its caller's metadata (if given) alongside."""
    meta_iter = iter(metas) if metas is not None else None
    return (_prepare(i, v, next(meta_iter) if meta_iter else None) for i, v in enumerate(inputs))


def _prepare(index: int, value: ImageInput, meta: dict[str, Any] | None = None) -> _Item | ImageResult:
    """One input -> an item to send, or (unreadable) its error result.

    Called lazily as chunks fill, so a folder is never held in memory at once.
    """
    meta = meta or {}
    if isinstance(value, np.ndarray):
        try:
            data = encode_array(value)
        except ValueError as exc:
            return ImageResult(
                index=index, source=f"array[{index}]", error=Problem(0, "Not an image array", str(exc)), meta=meta
            )
        return _Item(index, f"array[{index}]", data, meta)
    if isinstance(value, (bytes, bytearray)):
        return _Item(index, f"bytes[{index}]", bytes(value), meta)
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ImageResult(index=index, source=str(path), error=Problem(0, "Cannot read the file", str(exc)), meta=meta)
    return _Item(index, str(path), data, meta)


def _chunks(items: Iterable[_Item | ImageResult], limits: Limits) -> Iterator[list[_Item] | ImageResult]:
    """Greedy chunks within ``max_images`` and ``max_upload_bytes``; errors pass straight through."""
    budget = limits.max_upload_bytes - 1024
    chunk: list[_Item] = []
    used = 0
    for item in items:
        if isinstance(item, ImageResult):
            yield item
            continue
        cost = item.size + MULTIPART_OVERHEAD_BYTES
        if cost > budget:
            detail = f"{item.size} bytes; the service takes at most {limits.max_upload_bytes} bytes per request"
            yield ImageResult(
                index=item.index, source=item.source, error=Problem(413, "Upload too large", detail), meta=item.meta
            )
            continue
        if chunk and (len(chunk) >= limits.max_images or used + cost > budget):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += cost
    if chunk:
        yield chunk


def _problem(response: httpx.Response) -> Problem:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return Problem(
        status=response.status_code,
        title=str(body.get("title") or response.reason_phrase or "HTTP error"),
        detail=str(body.get("detail") or ""),
        type=str(body.get("type") or "about:blank"),
    )


def retry_after_s(response: httpx.Response, default_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return default_s
    try:
        wait = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default_s
        wait = when.timestamp() - time.time()
    return min(max(wait, 0.0), cap_s)


def _b64(value: str | None) -> bytes | None:
    import base64

    return base64.b64decode(value) if value else None


def _face(raw: dict[str, Any]) -> Face:
    b = raw["box"]
    landmarks = raw.get("landmarks")
    return Face(
        box=Box(b["x1"], b["y1"], b["x2"], b["y2"]),
        score=raw.get("score"),
        landmarks=tuple((float(x), float(y)) for x, y in landmarks) if landmarks else None,
        label=raw["label"],
        probabilities=dict(raw["probabilities"]),
        logits=tuple(raw["logits"]),
        poker_face_png=_b64(raw.get("poker_face_png")),
        expression_map_png=_b64(raw.get("expression_map_png")),
        aligned_face_png=_b64(raw.get("aligned_face_png")),
    )


def _results(chunk: list[_Item], body: dict[str, Any]) -> list[ImageResult]:
    model = ModelRef(**body["model"])
    labels = tuple(body["labels"])
    out = []
    for item, image in zip(chunk, body["images"]):
        out.append(
            ImageResult(
                index=item.index,
                source=item.source,
                faces=tuple(_face(f) for f in image["faces"]),
                width=image["width"],
                height=image["height"],
                labels=labels,
                model=model,
                timings_ms=dict(body.get("timings_ms", {})),
                meta=item.meta,
            )
        )
    return out


def _limits(response: httpx.Response) -> Limits:
    if response.status_code != 200:
        return Limits()  # a service without the endpoint: its documented defaults
    body = response.json()
    return Limits(**{k: int(v) for k, v in body.items() if k in Limits.__dataclass_fields__})


@dataclass
class _Step:
    """What to do after one answer: results to give out, and the items still to send."""

    done: list[ImageResult]
    resend: list[list[_Item]]


def _after(chunk: list[_Item], response: httpx.Response) -> _Step:
    """Read one answer to a chunk (not a retryable 503)."""
    if response.status_code == 200:
        return _Step(_results(chunk, response.json()), [])
    problem = _problem(response)
    if problem.slug in SERVICE_LEVEL_TYPES or (not problem.slug and response.status_code in SERVICE_LEVEL_STATUSES):
        raise ServiceError(f"{response.request.url} answered {response.status_code}: {problem}")
    try:
        body = response.json()
        bad = int(body["image_index"])
    except (ValueError, TypeError, KeyError):
        bad = None
    if bad is not None and 0 <= bad < len(chunk):
        culprit = chunk[bad]
        # The detail names the image by its position in this request; the result names it by
        # its source already, so it carries what is wrong with it alone.
        detail = body.get("image_detail")
        error = Problem(
            problem.status, problem.title, detail if isinstance(detail, str) else problem.detail, problem.type
        )
        rest = chunk[:bad] + chunk[bad + 1 :]
        return _Step(
            [ImageResult(index=culprit.index, source=culprit.source, error=error, meta=culprit.meta)],
            [rest] if rest else [],
        )
    if len(chunk) > 1:  # refused as a whole without naming an image: send them one by one
        return _Step([], [[item] for item in chunk])
    item = chunk[0]
    return _Step([ImageResult(index=item.index, source=item.source, error=problem, meta=item.meta)], [])


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 8,
        max_retry_wait_s: float = 30.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._transport = transport  # httpx's own hook (tests, proxies, Unix sockets)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.headers = {"Accept": "application/json", **(headers or {})}
        self._limits: Limits | None = None

    @staticmethod
    def _params(
        max_faces: int | None,
        min_face_size: int | None,
        threshold: float | None,
        aligned: bool,
        poker_face: bool,
        expression_map: bool,
        aligned_face: bool,
    ) -> dict[str, str]:
        params = {
            "max_faces": max_faces,
            "min_face_size": min_face_size,
            "threshold": threshold,
            "aligned": aligned or None,
            "return_poker_face": poker_face or None,
            "return_expression_map": expression_map or None,
            "return_aligned_face": aligned_face or None,
        }
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}

    @staticmethod
    def _files(chunk: list[_Item]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [
            ("images", (Path(item.source).name or f"image{item.index}", item.data, "application/octet-stream"))
            for item in chunk
        ]

    def _give_up(self, response: httpx.Response) -> ServiceError:
        return ServiceError(
            f"{self.url} kept answering {response.status_code} after {self.max_retries} retries: {_problem(response)}"
        )


class PFViTClient(_Base):
    """Blocking client. Use as a context manager, or call ``close()``.

    >>> with PFViTClient("http://127.0.0.1:8000") as client:
    ...     for result in client.recognize(["a.jpg", "b.png"], expression_map=True):
    ...         print(result.source, [f.label for f in result.faces])
    """

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if not (self._transport is None or isinstance(self._transport, httpx.BaseTransport)):
            raise TypeError("PFViTClient needs a synchronous httpx transport (httpx.BaseTransport)")
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout_s, headers=self.headers, transport=self._transport
        )

    def __enter__(self) -> PFViTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def limits(self) -> Limits:
        if self._limits is None:
            self._limits = _limits(self._http.get("/v1/limits"))
        return self._limits

    def models(self) -> dict[str, Any]:
        response = self._http.get("/v1/models")
        response.raise_for_status()
        models: dict[str, Any] = response.json()
        return models

    def _post(self, chunk: list[_Item], params: dict[str, str]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = self._http.post("/v1/recognize", params=params, files=self._files(chunk))
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt < self.max_retries:
                time.sleep(retry_after_s(response, cap_s=self.max_retry_wait_s))
        raise self._give_up(response)

    def iter_recognize(
        self,
        inputs: Iterable[ImageInput],
        *,
        max_faces: int | None = None,
        min_face_size: int | None = None,
        threshold: float | None = None,
        aligned: bool = False,
        poker_face: bool = False,
        expression_map: bool = False,
        aligned_face: bool = False,
        metas: Iterable[dict[str, Any]] | None = None,
    ) -> Iterator[ImageResult]:
        """Results as they come (in input order within a chunk); inputs are read lazily."""
        params = self._params(max_faces, min_face_size, threshold, aligned, poker_face, expression_map, aligned_face)
        prepared = _prepare_all(inputs, metas)
        for chunk in _chunks(prepared, self.limits()):
            if isinstance(chunk, ImageResult):
                yield chunk
                continue
            pending = [chunk]
            while pending:
                step = _after(pending[0], self._post(pending[0], params))
                pending = step.resend + pending[1:]
                yield from step.done

    def recognize(self, inputs: ImageInput | Iterable[ImageInput], **options: Any) -> list[ImageResult]:
        """Analyse every input; one ``ImageResult`` per input, in input order."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, bytes)):
            inputs = [inputs]
        return sorted(self.iter_recognize(inputs, **options), key=lambda r: r.index)


class AsyncPFViTClient(_Base):
    """Asynchronous client: ``await client.recognize(...)``; ``concurrency`` chunks in flight."""

    def __init__(self, url: str = DEFAULT_URL, *, concurrency: int = 2, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.concurrency = max(1, concurrency)
        if not (self._transport is None or isinstance(self._transport, httpx.AsyncBaseTransport)):
            raise TypeError("AsyncPFViTClient needs an asynchronous httpx transport (httpx.AsyncBaseTransport)")
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, headers=self.headers, transport=self._transport
        )

    async def __aenter__(self) -> AsyncPFViTClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def limits(self) -> Limits:
        if self._limits is None:
            self._limits = _limits(await self._http.get("/v1/limits"))
        return self._limits

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/v1/models")
        response.raise_for_status()
        models: dict[str, Any] = response.json()
        return models

    async def _post(self, chunk: list[_Item], params: dict[str, str]) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = await self._http.post("/v1/recognize", params=params, files=self._files(chunk))
            if response.status_code not in RETRY_STATUSES:
                return response
            if attempt < self.max_retries:
                await asyncio.sleep(retry_after_s(response, cap_s=self.max_retry_wait_s))
        raise self._give_up(response)

    async def _send(self, chunk: list[_Item], params: dict[str, str]) -> list[ImageResult]:
        out: list[ImageResult] = []
        pending = [chunk]
        while pending:
            step = _after(pending[0], await self._post(pending[0], params))
            pending = step.resend + pending[1:]
            out.extend(step.done)
        return out

    async def iter_recognize(
        self,
        inputs: Iterable[ImageInput],
        *,
        max_faces: int | None = None,
        min_face_size: int | None = None,
        threshold: float | None = None,
        aligned: bool = False,
        poker_face: bool = False,
        expression_map: bool = False,
        aligned_face: bool = False,
        metas: Iterable[dict[str, Any]] | None = None,
    ) -> AsyncIterator[ImageResult]:
        """Results as chunks finish (not in input order); at most ``concurrency`` requests at once."""
        params = self._params(max_faces, min_face_size, threshold, aligned, poker_face, expression_map, aligned_face)
        prepared = _prepare_all(inputs, metas)
        in_flight: set[asyncio.Task[list[ImageResult]]] = set()
        try:
            for chunk in _chunks(prepared, await self.limits()):
                if isinstance(chunk, ImageResult):
                    yield chunk
                    continue
                if len(in_flight) >= self.concurrency:
                    done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        for result in task.result():
                            yield result
                in_flight.add(asyncio.create_task(self._send(chunk, params)))
            while in_flight:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    for result in task.result():
                        yield result
        finally:
            for task in in_flight:
                task.cancel()

    async def recognize(self, inputs: ImageInput | Iterable[ImageInput], **options: Any) -> list[ImageResult]:
        """Analyse every input; one ``ImageResult`` per input, in input order."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, bytes)):
            inputs = [inputs]
        return sorted([r async for r in self.iter_recognize(inputs, **options)], key=lambda r: r.index)
