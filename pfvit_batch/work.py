"""What runs inside Ray: inputs read into work items, and the actor that recognises them.

A work item is one photo's file bytes or one sampled video frame's pixels. The actor holds one
loaded ``service.state.ServiceState`` (the service's own sessions, warm-up and pipeline) and
answers each item with rows built by ``service.api.analysis.recognized_faces``, the function
``/v1/recognize`` answers with, so a row holds exactly what the API would answer for that image.

Rows travel back to the driver as JSON text plus the PNGs asked for: Arrow then never has to
guess the type of a column that is sometimes empty.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pfvit_client.video import sample_frames

if TYPE_CHECKING:
    from service.config import Settings
    from service.pipeline import DetectOptions

OUTPUT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("sub", pa.int64()),
        ("first", pa.bool_()),  # the first row of its photo or frame (progress counts these)
        ("row", pa.string()),  # JSON: the row's fields (``ROW_FIELDS``)
        ("poker_face_png", pa.binary()),  # b"": not asked for, or no face
        ("expression_map_png", pa.binary()),
    ]
)
ROW_FIELDS = (
    "source", "frame", "time_s", "width", "height", "face",
    "box", "score", "landmarks", "label", "probabilities", "logits", "error",
)  # fmt: skip


def _item(seq: int, source: str, *, sub: int = 0, frame: int = -1, time_s: float = math.nan, data: bytes = b"",
          height: int = 0, width: int = 0, error: str = "") -> dict[str, Any]:  # fmt: skip
    """A work item: one photo's file bytes, or one sampled frame's ``(H, W, 3) uint8`` RGB pixels
    (``height`` > 0), or an input that could not be read (``error``).

    ``seq`` is the input file's position, ``sub`` the frame's among its video's samples (0 for
    a photo); ``frame`` is -1 and ``time_s`` NaN for a photo.
    """
    return {
        "seq": seq,
        "sub": sub,
        "source": source,
        "frame": frame,
        "time_s": time_s,
        "data": data,
        "height": height,
        "width": width,
        "error": error,
    }


def read_items(source: dict[str, Any], *, every: int | None, fps: float | None) -> list[dict[str, Any]]:
    """A photo's bytes, or a video's frames sampled as ``pfvit-recognize --every/--fps`` samples
    them (``pfvit_client.video.sample_frames``). A file that cannot be read, or a video that
    cannot be decoded, becomes an item that carries the error (after any frames decoded before it)."""
    import av

    seq, path = int(source["seq"]), str(source["source"])
    if not source["video"]:
        try:
            return [_item(seq, path, data=Path(path).read_bytes())]
        except OSError as exc:
            return [_item(seq, path, error=f"cannot read the file: {exc}")]
    items: list[dict[str, Any]] = []
    try:
        for sub, frame in enumerate(sample_frames(path, every=every, fps=fps)):
            h, w = frame.image.shape[:2]
            items.append(
                _item(
                    seq,
                    path,
                    sub=sub,
                    frame=frame.index,
                    time_s=frame.time_s,
                    data=frame.image.tobytes(),
                    height=h,
                    width=w,
                )
            )
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        items.append(_item(seq, path, sub=len(items), error=f"cannot decode the video: {exc}"))
    return items


@dataclass(frozen=True)
class Wanted:
    """What each face's row carries besides the API's fields: its pictures as PNG."""

    poker_face: bool = False
    expression_map: bool = False


class Recognizer:
    """A Ray Data actor: the service's models, loaded once, run on batches of work items.

    Args:
        settings: the service's ``Settings`` (models, providers, threads, detection defaults).
        options: the detection options of every image (``service.pipeline.DetectOptions``).
        wanted: the pictures to return besides the rows.
    """

    def __init__(self, settings: Settings, options: DetectOptions, wanted: Wanted) -> None:
        from service.state import ServiceState

        logging.getLogger("service").setLevel(logging.WARNING)
        self.state = ServiceState(settings)
        self.state.load()
        self.pipeline = self.state.require_pipeline()
        self.options = options
        self.wanted = wanted

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        out: list[dict[str, Any]] = []
        good = [item for item in items if not item["error"]]
        answers = dict(zip((id(item) for item in good), self._recognise(good)))
        for item in items:
            rows = answers.get(id(item)) or [(self._row(item, error=item["error"]), b"", b"")]
            for k, (row, poker, emap) in enumerate(rows):
                out.append({"seq": item["seq"], "sub": item["sub"], "first": k == 0, "row": json.dumps(row),
                            "poker_face_png": poker, "expression_map_png": emap})  # fmt: skip
        return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)

    # --- one batch through the service's pipeline -----------------------------------------

    def _recognise(self, items: list[dict[str, Any]]) -> list[list[tuple[dict[str, Any], bytes, bytes]]]:
        """Rows of every item: the whole batch in one pipeline run (its faces in one batch per
        graph, as one request's are); when one image is refused, each image alone, so that
        only the bad one becomes an error row."""
        from service.errors import PFViTError

        if not items:
            return []
        try:
            return self._run(items)
        except PFViTError as exc:
            if len(items) == 1:
                return [[(self._row(items[0], error=f"{exc.title}: {exc.detail}"), b"", b"")]]
        answers = []
        for item in items:
            answers += self._recognise([item])
        return answers

    def _run(self, items: list[dict[str, Any]]) -> list[list[tuple[dict[str, Any], bytes, bytes]]]:
        from service.api.analysis import recognized_faces
        from service.pipeline import StageTimer
        from service.vision.expression_map import expression_map_pngs
        from service.vision.imaging import encode_png

        images = [_pixels(item) for item in items]
        generate = self.wanted.poker_face or self.wanted.expression_map
        results = self.pipeline.run(
            images,
            self.options,
            StageTimer(),
            recognise=True,
            poker_face=generate,
            names=[Path(i["source"]).name for i in items],
        )
        labels = self.pipeline.model.labels
        answers = []
        for item, result in zip(items, results):
            pokers = (
                [encode_png(p) for p in result.poker_faces]
                if self.wanted.poker_face and result.poker_faces is not None
                else []
            )
            maps = (
                expression_map_pngs([f.aligned for f in result.faces], result.poker_faces)
                if self.wanted.expression_map
                else []
            )
            rows = []
            for k, face in enumerate(recognized_faces(result, labels)):
                fields = face.model_dump(include={"box", "score", "landmarks", "label", "probabilities", "logits"})
                rows.append((self._row(item, width=result.width, height=result.height, face=k, **fields),
                             pokers[k] if pokers else b"", maps[k] if maps else b""))  # fmt: skip
            answers.append(rows or [(self._row(item, width=result.width, height=result.height), b"", b"")])
        return answers

    @staticmethod
    def _row(item: dict[str, Any], **fields: Any) -> dict[str, Any]:
        row = dict.fromkeys(ROW_FIELDS)
        video = item["frame"] >= 0
        row.update(
            source=item["source"],
            frame=item["frame"] if video else None,
            time_s=round(item["time_s"], 4) if video else None,
        )
        row.update(fields)
        row["error"] = fields.get("error") or None
        return row


def _pixels(item: dict[str, Any]) -> bytes | np.ndarray:
    """A photo's file bytes as they are (decoded by the pipeline, like an upload); a frame's
    pixels as the ``(H, W, 3) uint8`` RGB array they were decoded to."""
    if not item["height"]:
        return bytes(item["data"])
    return np.frombuffer(item["data"], np.uint8).reshape(item["height"], item["width"], 3)
