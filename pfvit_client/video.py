"""Video in and out with PyAV (FFmpeg inside its wheels): sampled frames, annotated copies.

Frames are ``(H, W, 3) uint8`` RGB arrays with their index and timestamp in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from pfvit_client.types import ImageResult

if TYPE_CHECKING:
    import av

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class Frame:
    index: int  # position in the decoded stream, from 0
    time_s: float  # presentation time
    image: np.ndarray  # (H, W, 3) uint8 RGB


def _frame_time(frame: av.VideoFrame, index: int, rate: float) -> float:
    return float(frame.time) if frame.time is not None else index / rate


def sample_frames(path: str | Path, *, every: int | None = None, fps: float | None = None) -> Iterator[Frame]:
    """Decode ``path`` and keep every ``every``-th frame, or about ``fps`` frames per second.

    Raises ``ValueError`` when the file holds no video stream, ``av.error.FFmpegError`` when it
    cannot be decoded.
    """
    import av

    if (every is None) == (fps is None):
        raise ValueError("give exactly one of every= or fps=")
    if every is not None and every < 1:
        raise ValueError("every must be at least 1")
    if fps is not None and fps <= 0:
        raise ValueError("fps must be positive")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        next_time = 0.0
        step_s = 1.0 / fps if fps is not None else 0.0
        for index, frame in enumerate(container.decode(stream)):
            t = _frame_time(frame, index, rate)
            if every is not None:
                keep = index % every == 0
            else:
                keep = t + 1e-6 >= next_time
                if keep:
                    next_time += step_s
            if keep:
                yield Frame(index, t, frame.to_ndarray(format="rgb24"))


def estimated_samples(path: str | Path, *, every: int | None = None, fps: float | None = None) -> int | None:
    """How many frames ``sample_frames`` will give, from the container's header (None if unknown)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = stream.frames or 0
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
            if every is not None and frames:
                return -(-frames // every)
            if fps is not None and duration:
                return max(1, int(duration * fps + 0.999))
    except (av.error.FFmpegError, IndexError):
        return None
    return None


def draw_faces(image: np.ndarray, result: ImageResult | None) -> np.ndarray:
    """Boxes and labels of ``result`` drawn on a copy of ``image``."""
    if result is None or not result.faces:
        return image
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    width = max(2, image.shape[1] // 320)
    for face in result.faces:
        b = face.box
        draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=(255, 196, 0), width=width)
        text = f"{face.label} {face.probabilities.get(face.label, 0.0):.0%}"
        tw = draw.textlength(text)
        top = max(0.0, b.y1 - 14)
        draw.rectangle([b.x1, top, b.x1 + tw + 6, top + 14], fill=(255, 196, 0))
        draw.text((b.x1 + 3, top + 1), text, fill=(0, 0, 0))
    return np.asarray(pil)


def write_annotated(source: str | Path, target: str | Path, results: dict[int, ImageResult]) -> int:
    """Copy ``source`` to ``target`` with each sampled frame's faces drawn, held until the next sample.

    ``results`` maps frame index -> result. Returns the number of frames written.
    """
    import av

    written = 0
    with av.open(str(source)) as src, av.open(str(target), mode="w") as dst:
        in_stream = src.streams.video[0]
        rate = in_stream.average_rate or 25
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        out_stream = dst.add_stream(codec, rate=rate)
        out_stream.width = in_stream.codec_context.width // 2 * 2  # even sides for yuv420p
        out_stream.height = in_stream.codec_context.height // 2 * 2
        out_stream.pix_fmt = "yuv420p"
        current: ImageResult | None = None
        for index, frame in enumerate(src.decode(in_stream)):
            current = results.get(index, current)
            rgb = draw_faces(frame.to_ndarray(format="rgb24"), current)[: out_stream.height, : out_stream.width]
            for packet in out_stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                dst.mux(packet)
            written += 1
        for packet in out_stream.encode():
            dst.mux(packet)
    return written
