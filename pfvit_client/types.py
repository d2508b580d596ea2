"""What the client returns: frozen dataclasses parsed from the service's JSON.

Pictures travel as PNG bytes (``poker_face_png`` and friends); decode them with Pillow when
needed. Arrays the client accepts are ``(H, W, 3) uint8`` RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Box:
    """Face box in the uploaded image's pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Face:
    box: Box
    score: float | None  # detection probability; None for uploads sent as aligned crops
    landmarks: tuple[tuple[float, float], ...] | None  # left eye, right eye, nose, left and right mouth corner
    label: str
    probabilities: dict[str, float]
    logits: tuple[float, ...]  # in the order of the service's labels
    poker_face_png: bytes | None = None
    expression_map_png: bytes | None = None
    aligned_face_png: bytes | None = None


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    provider: str


@dataclass(frozen=True)
class Problem:
    """Why an image could not be analysed: the service's problem document, or the client's own."""

    status: int  # HTTP status; 0 when the client refused the input before sending it
    title: str
    detail: str
    type: str = "about:blank"

    @property
    def slug(self) -> str:
        """The problem type's last segment (``invalid-image``); empty for ``about:blank``."""
        return "" if self.type == "about:blank" else self.type.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}" if self.detail else self.title


@dataclass(frozen=True)
class ImageResult:
    """The answer for one input, in the order the inputs were given.

    ``error`` is set (and ``faces`` empty) when the service refused this image or it could
    not be read; the other inputs are analysed regardless.
    """

    index: int  # position among the inputs
    source: str  # file path, or "array[i]" / "bytes[i]"
    faces: tuple[Face, ...] = ()
    width: int | None = None
    height: int | None = None
    labels: tuple[str, ...] = ()
    model: ModelRef | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # of the request this image went in
    error: Problem | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # caller's own data (the CLI puts frame times here)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Limits:
    """What one request may carry (``GET /v1/limits``)."""

    max_images: int = 16
    max_upload_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_faces_limit: int = 100
    default_max_faces: int = 20
