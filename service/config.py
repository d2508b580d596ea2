"""The service's settings: one pydantic-settings class, environment prefix ``PFVIT_``.

Every knob the service has lives here and nowhere else; ``get_settings()`` is cached and
tests override it (``app.dependency_overrides`` or by passing a ``Settings`` to
``create_app``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLDS, MIN_FACE_SIZE_FLOOR

# models/ at the repository root, beside this package (the Docker image sets PFVIT_MODELS_DIR).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_EMOTION_MODEL = "pfvit-micro-ferplus"


class Settings(BaseSettings):
    """Service settings, read from ``PFVIT_*`` environment variables (and ``.env`` if present)."""

    model_config = SettingsConfigDict(env_prefix="PFVIT_", env_file=".env", extra="ignore")

    # --- network
    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 only inside a container.")
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port; each loads its own models (sessions, memory, GPU memory). "
        "Metrics add up across them (docs/deploy.md, 'Several workers').",
    )

    # --- models
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Folder holding one sub-folder per model.")
    emotion_model: str = Field(DEFAULT_EMOTION_MODEL, description="Sub-folder of models_dir with the PF-ViT card.")
    detector_model: str = Field("mtcnn", description="Sub-folder of models_dir with the MTCNN card.")
    providers: str = Field(
        "auto",
        description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'tensorrt' (TensorRT, then CUDA for what "
        "it does not take), or a comma-separated list of ONNX Runtime execution-provider names in order of preference.",
    )
    # --- CUDA and TensorRT provider options: passed to ONNX Runtime only when that provider is used
    cuda_device_id: int = Field(0, ge=0, description="GPU the CUDA (and TensorRT) provider runs on.")
    cuda_arena_extend_strategy: Literal["kSameAsRequested", "kNextPowerOfTwo"] = Field(
        "kSameAsRequested",
        description="How ONNX Runtime's CUDA memory arena grows: by what a run needs (the default here), or by "
        "doubling (ONNX Runtime's own default: fewer allocations, more memory held).",
    )
    cuda_mem_limit_mb: int = Field(
        0, ge=0, description="Cap of the CUDA arena of each session, MiB (0: no cap). Each worker has its own sessions."
    )
    cuda_cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        "HEURISTIC",
        description="How cuDNN picks convolution algorithms: EXHAUSTIVE benchmarks them for every new input shape "
        "(each new batch size and each detector pyramid level of a new photo size pays it once), HEURISTIC asks "
        "cuDNN's heuristics, DEFAULT takes the default algorithm.",
    )
    cuda_copy_in_default_stream: bool = Field(
        True, description="Copies between host and GPU on the default CUDA stream (ONNX Runtime's default)."
    )
    trt_fp16: bool = Field(False, description="TensorRT (PFVIT_PROVIDERS=tensorrt): let it build fp16 engines.")
    trt_engine_cache_dir: str = Field(
        "", description="TensorRT: folder where built engines are kept across restarts (empty: rebuilt at every start)."
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads per session; 0 lets it decide. The detector's sessions take 1 while "
        "detect_threads is above 1.",
    )
    warmup_runs: int = Field(2, ge=0, le=100)
    max_inference_batch: int = Field(64, ge=1, le=4096, description="Faces per ONNX Runtime call at most.")
    max_concurrent_inference: int = Field(
        0,
        ge=0,
        le=64,
        description="Requests computing at once; others queue. 0: two when the sessions run on the CPU (their "
        "detections share the detector's threads; docs/benchmarks.md has the measurements), four on CUDA.",
    )

    detect_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="Threads that share each photo's face detection (pyramid, P-Net bands, R-Net and O-Net calls); "
        "0: one per usable core. Above 1, the detector's ONNX Runtime sessions run single-threaded inside them "
        "(docs/benchmarks.md has the measurements).",
    )

    # --- request limits
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Whole request body, bytes (413 above).")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Pixels per image (413 above).")
    max_images: int = Field(16, ge=1, le=256, description="Images per request.")
    max_faces_limit: int = Field(100, ge=1, le=1000, description="Largest max_faces a client may ask for.")

    # --- detection defaults (clients may override per request); the detector's own by default
    default_max_faces: int = Field(20, ge=1, description="At most PFVIT_MAX_FACES_LIMIT.")
    default_min_face_size: int = Field(DEFAULT_MIN_FACE_SIZE, ge=MIN_FACE_SIZE_FLOOR, description="Pixels.")
    default_detection_threshold: float = Field(
        DEFAULT_THRESHOLDS[2], gt=0.0, lt=1.0, description="Final (O-Net) face probability."
    )

    # --- detection speed
    detect_max_side: int = Field(
        1280,
        ge=0,
        description="Longest side, px, of the picture the face detector searches; longer photos are reduced to it "
        "first (JPEGs while decoding). 0: never reduce. A photo of long side L is searched down to faces of "
        "max(min_face_size, min(min_face_size, 12) * L / detect_max_side) px: min_face_size itself up to "
        "L = 2133 px at the defaults.",
    )

    batch_max_wait_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="Micro-batching of the emotion graphs across requests: how long a request's faces may wait "
        "for other requests' faces to share their ONNX Runtime call (at most max_inference_batch faces). A "
        "request never waits when no other request is in flight.",
    )

    # --- demo page
    ui_enabled: bool = Field(True, description="Serve the demo page at / (and its files under /ui/).")

    # --- bounded work, queue and connections
    max_request_pixels: int = Field(
        64_000_000,
        ge=1024,
        description="Pixels of all images of one request together, read from their headers (413 above).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="Deadline of one analysis request, queue wait included (504 after it)."
    )
    max_queue: int = Field(
        8, ge=0, le=10_000, description="Requests waiting for a computing slot at most; beyond it 503 with Retry-After."
    )
    retry_after_s: int = Field(
        2, ge=1, le=3600, description="Retry-After sent with 503 answers (queue full, not ready)."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        le=600.0,
        description="Time a connection has to send a request's headers; closed after it (slowloris).",
    )
    body_timeout_s: float = Field(
        30.0, gt=0.0, description="Time a client has to send the request body (408 after it)."
    )
    keep_alive_timeout_s: int = Field(5, ge=1, le=600, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(
        256, ge=1, description="Concurrent connections (and requests) the server takes; more get 503 from the server."
    )
    shutdown_drain_s: float = Field(
        0.0,
        ge=0.0,
        le=300.0,
        description="On SIGTERM, /readyz answers 503 at once and requests are still served for this long before the "
        "listener closes, so that load balancers stop sending first (Kubernetes: a few seconds). 0: the listener "
        "closes at once.",
    )
    shutdown_timeout_s: int = Field(
        20, ge=1, le=600, description="After the drain, in-flight requests get this long to finish."
    )
    ort_cpu_arena: bool = Field(
        False,
        description="ONNX Runtime's CPU memory arena. Off by default: the arena keeps the peak of the largest "
        "request for the process's life; off, memory goes back after each request (docs/deploy.md).",
    )

    # --- access and tracing
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, the analysis routes and /v1/models need one "
        "(Authorization: Bearer <key> or X-API-Key). Empty: no authentication.",
    )
    metrics_require_key: bool = Field(False, description="When API keys are set, /metrics needs one too.")
    docs_require_key: bool = Field(
        False,
        description="When API keys are set, /docs, /redoc, /openapi.json and the docs' files need one too. "
        "Off by default: the API's description is public (it is in the source), and a browser cannot send a key "
        "with a page load.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS ('*' for any); empty: no CORS headers.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON line per request and per log record."
    )

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower() if isinstance(value, str) else value

    @field_validator("default_max_faces")
    @classmethod
    def _default_within_limit(cls, value: int, info: ValidationInfo) -> int:
        # max_faces_limit is declared first, so it is validated (and in info.data) by now.
        limit = info.data.get("max_faces_limit")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most PFVIT_MAX_FACES_LIMIT ({limit}), the most any request may ask for")
        return value

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def emotion_model_dir(self) -> Path:
        return self.models_dir / self.emotion_model

    @property
    def detector_model_dir(self) -> Path:
        return self.models_dir / self.detector_model


@lru_cache
def get_settings() -> Settings:
    return Settings()
