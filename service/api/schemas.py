"""Response models of the public API (what ``/docs`` shows and what clients parse)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from service.vision.mtcnn import MIN_FACE_SIZE_FLOOR


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
        description=(
            "Five (x, y) points: left eye, right eye, nose tip, left and right mouth corner; null for aligned uploads."
        )
    )


class RecognizedFace(FaceBase):
    label: str = Field(description="Most probable emotion.")
    probabilities: dict[str, float] = Field(description="Softmax probability per label.")
    logits: list[float] = Field(description="Raw logits in the order of `labels`.")
    poker_face_png: str | None = Field(None, description="Base64 PNG of the generated poker face, when asked for.")
    expression_map_png: str | None = Field(
        None,
        description=(
            "Base64 PNG of the expression map (|aligned face - poker face|, smoothed, normalised per "
            "face) over the aligned face, when asked for."
        ),
    )
    aligned_face_png: str | None = Field(
        None, description="Base64 PNG of the aligned face the model saw, when asked for."
    )


class PokerFace(FaceBase):
    poker_face_png: str = Field(description="Base64 PNG of the generated poker face (RGB, model input size).")
    expression_map_png: str | None = Field(
        None, description="Base64 PNG of the expression map over the aligned face, when asked for."
    )


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
    timings_ms: dict[str, float] = Field(
        description="Wall time per stage (decode, detect, align, infer, generate, encode, total)."
    )


class PokerFaceResponse(BaseModel):
    model: ModelRef
    images: list[PokerFaceImage]
    timings_ms: dict[str, float]


class GraphInfo(BaseModel):
    file: str
    sha256: str
    precision: str = Field(
        description="Precision of the graph's weights and arithmetic, from its card: fp32 or fp16 "
        "(an fp16 graph takes and gives float32 tensors all the same)."
    )
    providers: list[str] = Field(
        description="Execution providers the graph's session actually runs on, in order; "
        "empty until the models are loaded."
    )
    fallback: bool = Field(
        False,
        description="True when the session does not run on the first provider asked for "
        "(requested_providers): PFVIT_PROVIDERS=auto where CUDA cannot load runs on the CPU.",
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: str
    labels: list[str]
    card: dict[str, Any]
    graphs: dict[str, GraphInfo]


class CpuSizing(BaseModel):
    """The CPU the server found and the threads it sized for it (per worker process)."""

    usable_cores: int = Field(
        description="Cores the threads are sized for: the smaller of affinity_cores and "
        "quota_cores rounded up, never below 1."
    )
    affinity_cores: int = Field(description="CPUs in the process's affinity mask (narrowed by CPU sets).")
    quota_cores: float | None = Field(
        description="The cgroup CPU quota in cores (Kubernetes CPU limit, docker --cpus); null: none."
    )
    detect_threads: int = Field(description="Threads that share each photo's face detection.")
    intra_op_threads: int = Field(
        description="ONNX Runtime threads per emotion-graph session; 0: ONNX Runtime's own "
        "default, left when nothing narrows the machine's cores."
    )
    computing_slots: int = Field(description="Requests computing at once (PFVIT_MAX_CONCURRENT_INFERENCE).")


class ModelsResponse(BaseModel):
    ready: bool
    requested_providers: list[str] = Field(
        default_factory=list, description="The providers PFVIT_PROVIDERS asks for, in order."
    )
    cpu: CpuSizing
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    detail: str | None = None


class Limits(BaseModel):
    max_images: int = Field(description="Images per request at most.")
    max_upload_bytes: int = Field(description="Whole request body, bytes (413 above).")
    max_image_pixels: int = Field(description="Pixels per image (413 above).")
    max_request_pixels: int = Field(description="Pixels of all images of one request together (413 above).")
    max_faces_limit: int = Field(description="Largest `max_faces` a request may ask for.")
    default_max_faces: int = Field(description="`max_faces` when a request does not say.")


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``); every error is one."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the problem type, e.g. https://pfvit.dev/problems/invalid-image.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="Path of the request.")
    request_id: str | None = Field(None, description="The request's X-Request-ID.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="validation-error only: {loc, msg, type} per offending field, the first 20 of them."
    )
    error_count: int | None = Field(None, description="validation-error only: how many fields were at fault in all.")
    image_index: int | None = Field(None, description="Position of the offending image, when one image is at fault.")
    image_detail: str | None = Field(
        None, description="With image_index: what is wrong with that image, without naming it (detail names it)."
    )


# --- JSON input (application/json instead of multipart) -------------------------------------


# Longest file name a JSON image may carry.
FILENAME_MAX_CHARS = 255


def _at_most_max_images(images: Any, info: ValidationInfo) -> Any:
    """``images`` holds at most ``PFVIT_MAX_IMAGES`` items (the ``max_images`` of the
    validation context), checked before any item is validated: a long list of invalid items
    is one error, not one per item."""
    limit = (info.context or {}).get("max_images")
    if limit is not None and isinstance(images, list) and len(images) > limit:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items, not {actual_length}",
            {"max_length": limit, "actual_length": len(images)},
        )
    return images


ImageList = Annotated[list["JsonImage"], BeforeValidator(_at_most_max_images)]


class JsonImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        min_length=1,
        description=(
            "The image file's bytes in base64, or a data: URI (data:image/jpeg;base64,...). URLs are not fetched."
        ),
    )
    filename: str | None = Field(None, max_length=FILENAME_MAX_CHARS, description="Echoed in the answer; never logged.")


class JsonDetectOptions(BaseModel):
    """Detection options in a JSON body; each one given here wins over the same query parameter
    (``service.api.options``)."""

    model_config = ConfigDict(extra="forbid")

    max_faces: int | None = Field(None, ge=1, description="Most faces returned per image (highest scores first).")
    min_face_size: int | None = Field(
        None, ge=MIN_FACE_SIZE_FLOOR, le=4096, description="Smallest face side searched for, in pixels."
    )
    threshold: float | None = Field(None, gt=0.0, lt=1.0, description="Final detection probability threshold.")
    aligned: bool | None = Field(None, description="The images are already aligned face crops, square: skip detection.")


class JsonImagesRequest(JsonDetectOptions):
    """A JSON body of an analysis route: its images and options."""

    images: ImageList = Field(min_length=1, description="One or more images, at most PFVIT_MAX_IMAGES.")


class JsonRecognizeRequest(JsonImagesRequest):
    return_poker_face: bool | None = Field(None, description="Also return each face's poker face as base64 PNG.")
    return_expression_map: bool | None = Field(None, description="Per face, the expression map as base64 PNG.")
    return_aligned_face: bool | None = Field(
        None, description="Per face, the aligned crop the model saw, as base64 PNG."
    )


class JsonPokerFaceRequest(JsonImagesRequest):
    return_expression_map: bool | None = Field(None, description="Per face, the expression map as base64 PNG.")
