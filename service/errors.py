"""The project's own exception types.

Every error a client can cause is one of these classes. Each class carries the HTTP status
and the RFC 9457 problem ``type``/``title`` it maps to; ``service.api.problems`` turns them
into ``application/problem+json`` responses in one place. Nothing here imports a web
framework, so the pure preprocessing code (shared with ``training/``) raises them too.
"""

from __future__ import annotations

from typing import Any


class PFViTError(Exception):
    """Base class of every error this project raises on purpose."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"
    retry_after: bool = False  # answered with a Retry-After header (the service is busy or starting)

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra  # extra members for the problem document (e.g. the offending field)


# --- client errors (4xx) -------------------------------------------------------------------


class InvalidRequest(PFViTError):
    status = 400
    slug = "invalid-request"
    title = "Invalid request"


class ValidationFailed(PFViTError):
    """A missing or misnamed field, or an option outside what the service accepts.

    The framework's own request validation is rendered as this class too
    (``service.api.problems``), so a client sees one problem type for every invalid option,
    whether its bound is in the schema (``max_faces=0``) or a setting (``max_faces`` over
    ``PFVIT_MAX_FACES_LIMIT``). ``errors`` lists ``{loc, msg, type}`` per offending field.
    """

    status = 422
    slug = "validation-error"
    title = "Request validation failed"


class EmptyUpload(InvalidRequest):
    slug = "empty-upload"
    title = "Empty upload"


class InvalidImage(PFViTError):
    """The bytes are not a decodable image (garbage, truncated, corrupt)."""

    status = 422
    slug = "invalid-image"
    title = "Invalid image"


class NotSquareCrop(InvalidImage):
    """``aligned=true`` on an image that is not square: an aligned crop is square, and
    stretching another shape to the model's input would distort the face it holds."""

    slug = "not-square"
    title = "Aligned crop is not square"


class UnsupportedMediaType(PFViTError):
    """A real image, but in a format the service does not accept (e.g. GIF, TIFF)."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported image format"


class UnsupportedBodyType(UnsupportedMediaType):
    """A request body that is neither multipart, JSON nor an image (same problem type)."""

    title = "Unsupported request body type"


class ImageTooLarge(PFViTError):
    """Too many pixels (declared or decoded), including decompression bombs."""

    status = 413
    slug = "image-too-large"
    title = "Image has too many pixels"


class PayloadTooLarge(PFViTError):
    """The upload itself exceeds the configured byte limit."""

    status = 413
    slug = "payload-too-large"
    title = "Upload too large"


class Unauthorized(PFViTError):
    """API keys are configured and the request carries none, or a wrong one."""

    status = 401
    slug = "unauthorized"
    title = "Missing or invalid API key"


class RequestTimeout(PFViTError):
    """The client did not send its request body within the configured time."""

    status = 408
    slug = "request-timeout"
    title = "Request body not received in time"


class NotAcceptable(PFViTError):
    status = 406
    slug = "not-acceptable"
    title = "Not acceptable"


class NoFaceFound(PFViTError):
    """Raised only where a face is required to answer (``Accept: image/png`` poker face)."""

    status = 422
    slug = "no-face-found"
    title = "No face found"


# --- server-side conditions (5xx) ----------------------------------------------------------


class ModelNotReady(PFViTError):
    status = 503
    slug = "not-ready"
    title = "Models are not loaded yet"
    retry_after = True


class QueueFull(PFViTError):
    """Every computing slot is busy and the waiting line is at ``PFVIT_MAX_QUEUE``."""

    status = 503
    slug = "queue-full"
    title = "Service busy"
    retry_after = True


class DeadlineExceeded(PFViTError):
    """The request did not finish within ``PFVIT_REQUEST_TIMEOUT_S`` (queue wait included)."""

    status = 504
    slug = "deadline-exceeded"
    title = "Request took longer than the deadline"


class ClientDisconnected(PFViTError):
    """The client went away before its answer was ready; nobody reads this one (nginx's 499)."""

    status = 499
    slug = "client-disconnected"
    title = "Client closed the connection"


class ModelLoadError(PFViTError):
    """A model file is missing, fails its checksum or does not match its card.

    Raised at start-up; the service refuses to start rather than serve the wrong weights.
    """

    status = 500
    slug = "model-load-error"
    title = "Model could not be loaded"


class CapabilityMissing(PFViTError):
    """The loaded model cannot do what was asked (e.g. a card without a poker-face graph)."""

    status = 501
    slug = "capability-missing"
    title = "Not supported by the loaded model"


class InternalError(PFViTError):
    """A broken invariant of the service's own code (a bug), raised where ``assert`` would
    vanish under ``python -O``; answered as a 500 problem."""


# --- control flow inside the service (never rendered) ---------------------------------------


class WorkAbandoned(Exception):
    """Raised in a worker thread at a stage boundary once its request was given up
    (deadline passed or client gone), so the thread stops computing for nobody."""
