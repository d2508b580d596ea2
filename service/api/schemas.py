"""Response models of the public API (what ``/docs`` shows and what clients parse)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class ModelRef(BaseModel):
    name: str
    version: str
    provider: str = Field(description="Execution provider actually running the model, e.g. CUDAExecutionProvider.")


class FaceBase(BaseModel):
    box: Box = Field(description="Face box in the uploaded image's pixels (the whole image for aligned uploads).")
    score: float | None = Field(description="Detection probability; null for aligned uploads.")
    landmarks: list[list[float]] | None = Field(
        description="Five (x, y) points: left eye, right eye, nose tip, left and right mouth corner; null for aligned uploads."
    )


class RecognizedFace(FaceBase):
    label: str = Field(description="Most probable emotion.")
    probabilities: dict[str, float] = Field(description="Softmax probability per label.")
    logits: list[float] = Field(description="Raw logits in the order of `labels`.")
    poker_face_png: str | None = Field(None, description="Base64 PNG of the generated poker face, when asked for.")
    expression_map_png: str | None = Field(
        None, description="Base64 PNG of the expression map (|aligned face - poker face|, smoothed, normalised per face) over the aligned face, when asked for."
    )
    aligned_face_png: str | None = Field(None, description="Base64 PNG of the aligned face the model saw, when asked for.")


class PokerFace(FaceBase):
    poker_face_png: str = Field(description="Base64 PNG of the generated poker face (RGB, model input size).")
    expression_map_png: str | None = Field(None, description="Base64 PNG of the expression map over the aligned face, when asked for.")


class ImageInfo(BaseModel):
    index: int = Field(description="Position of the image in the upload.")
    filename: str | None
    width: int
    height: int


class RecognizedImage(ImageInfo):
    faces: list[RecognizedFace]


class PokerFaceImage(ImageInfo):
    faces: list[PokerFace]


class RecognizeResponse(BaseModel):
    model: ModelRef
    labels: list[str] = Field(description="Label order of every `logits` list.")
    images: list[RecognizedImage]
    timings_ms: dict[str, float] = Field(description="Wall time per stage (decode, detect, align, infer, generate, encode, total).")


class PokerFaceResponse(BaseModel):
    model: ModelRef
    images: list[PokerFaceImage]
    timings_ms: dict[str, float]


class GraphInfo(BaseModel):
    file: str
    sha256: str
    providers: list[str]


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: str
    labels: list[str]
    card: dict
    graphs: dict[str, GraphInfo]


class ModelsResponse(BaseModel):
    ready: bool
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    detail: str | None = None


class Limits(BaseModel):
    max_images: int = Field(description="Images per request at most.")
    max_upload_bytes: int = Field(description="Whole request body, bytes (413 above).")
    max_image_pixels: int = Field(description="Pixels per image (413 above).")
    max_faces_limit: int = Field(description="Largest `max_faces` a request may ask for.")
    default_max_faces: int = Field(description="`max_faces` when a request does not say.")
