"""Execution providers: asked for by name means used, or the service refuses to start; ``auto``
falls back to the CPU and says so. Runs anywhere (the CPU build stands in for a CUDA build that
cannot load CUDA: both silently run on the CPU unless told not to)."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest

from service.errors import ModelLoadError
from service.runtime import CPU, CUDA, create_session, required_provider, resolve_providers
from tools.loopback import start_server

REPO = Path(__file__).resolve().parent.parent
PNET = REPO / "models" / "mtcnn" / "pnet.onnx"


def test_required_provider_only_when_named() -> None:
    assert required_provider("auto", [CUDA, CPU]) is None  # auto may fall back
    assert required_provider("cpu", [CPU]) is None  # the CPU is always there
    assert required_provider("cuda", [CUDA, CPU]) == CUDA
    assert required_provider("CUDAExecutionProvider,CPUExecutionProvider", [CUDA, CPU]) == CUDA


@pytest.mark.skipif(
    CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA"
)
def test_a_named_provider_that_onnx_runtime_cannot_use_is_an_error() -> None:
    with warnings.catch_warnings():
        # ONNX Runtime itself only warns (CPU build) or says nothing (CUDA build without a GPU).
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ModelLoadError, match="CUDAExecutionProvider was asked for .* driver"):
            create_session(PNET, providers=[CUDA, CPU], required=CUDA)
        session = create_session(PNET, providers=[CUDA, CPU])  # not required: the fallback is allowed
    assert session.get_providers() == [CPU]


def test_auto_takes_cuda_only_when_this_build_offers_it() -> None:
    import onnxruntime as ort

    chosen = resolve_providers("auto")
    assert chosen[-1] == CPU
    assert (CUDA in chosen) == (CUDA in ort.get_available_providers())


@pytest.mark.skipif(
    CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA"
)
def test_service_refuses_to_start_when_cuda_is_asked_for_and_missing(models_dir) -> None:
    proc, _ = start_server(
        {"PFVIT_MODELS_DIR": str(models_dir), "PFVIT_EMOTION_MODEL": "stub-emotion", "PFVIT_PROVIDERS": "cuda"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "cannot start" in out and "CUDAExecutionProvider" in out and "gpu" in out


@pytest.mark.skipif(
    CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA"
)
def test_auto_falling_back_to_the_cpu_says_so_in_the_log_models_and_metrics(settings, monkeypatch, caplog) -> None:
    """``auto`` on a build that offers CUDA but cannot load it (here: a CPU build that claims
    CUDA, which ONNX Runtime then drops, as onnxruntime-gpu does without a GPU)."""
    import logging

    import onnxruntime as ort
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.conftest import wait_ready
    from tests.prometheus_text import sample_value

    offered = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *offered])
    caplog.set_level(logging.WARNING, logger="service.runtime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ONNX Runtime's own word on the missing provider
        with TestClient(create_app(settings.model_copy(update={"providers": "auto"}))) as client:
            wait_ready(client)
            body = client.get("/v1/models").json()
            exposition = client.get("/metrics").text
    assert body["requested_providers"] == [CUDA, CPU]
    for model in body["models"]:
        for graph in model["graphs"].values():
            assert graph["providers"] == [CPU] and graph["fallback"] is True
        assert sample_value(exposition, "pfvit_provider_fallback", model=model["name"], requested=CUDA) == 1.0
        assert (
            sample_value(
                exposition,
                "pfvit_model_info",
                model=model["name"],
                version=model["version"],
                kind=model["kind"],
                provider=CPU,
            )
            == 1.0
        )
    fallbacks = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(fallbacks) == 5 and all(
        CUDA in m and CPU in m for m in fallbacks
    )  # P-, R-, O-Net, recognition, poker face


def test_cuda_and_tensorrt_options_reach_only_their_provider() -> None:
    from service.config import Settings
    from service.runtime import TENSORRT, ProviderOptions

    defaults = ProviderOptions.from_settings(Settings(_env_file=None))
    assert defaults.for_providers([CUDA, CPU]) == [
        {
            "device_id": "0",
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
        },
        {},
    ]
    assert defaults.for_providers([CPU]) == [{}]
    tuned = ProviderOptions.from_settings(
        Settings(
            _env_file=None,
            cuda_device_id=1,
            cuda_arena_extend_strategy="kNextPowerOfTwo",
            cuda_mem_limit_mb=512,
            cuda_cudnn_conv_algo_search="EXHAUSTIVE",
            cuda_copy_in_default_stream=False,
            trt_fp16=True,
            trt_engine_cache_dir="/cache",
        )
    )
    trt, cuda, cpu = tuned.for_providers([TENSORRT, CUDA, CPU])
    assert cuda == {
        "device_id": "1",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "do_copy_in_default_stream": "0",
        "gpu_mem_limit": str(512 * 1024 * 1024),
    }
    assert trt == {
        "device_id": "1",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/cache",
    }
    assert cpu == {}


def test_settings_read_the_provider_options_from_the_environment(monkeypatch) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    monkeypatch.setenv("PFVIT_CUDA_CUDNN_CONV_ALGO_SEARCH", "DEFAULT")
    monkeypatch.setenv("PFVIT_CUDA_MEM_LIMIT_MB", "2048")
    settings = Settings(_env_file=None)
    assert (settings.cuda_cudnn_conv_algo_search, settings.cuda_mem_limit_mb) == ("DEFAULT", 2048)
    monkeypatch.setenv("PFVIT_CUDA_CUDNN_CONV_ALGO_SEARCH", "FASTEST")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_create_session_hands_onnx_runtime_the_options(monkeypatch) -> None:
    """What ONNX Runtime is given, seen without a GPU: a recording stand-in that builds the
    real session on the CPU."""
    import onnxruntime as ort

    from service.runtime import ProviderOptions

    real = ort.InferenceSession
    given = {}

    def recording(path, sess_options=None, providers=None, provider_options=None):
        given.update(providers=providers, provider_options=provider_options)
        return real(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", recording)
    create_session(PNET, providers=[CUDA, CPU], provider_options=ProviderOptions(cuda_mem_limit_mb=256))
    assert given["providers"] == [CUDA, CPU]
    assert given["provider_options"][0]["gpu_mem_limit"] == str(256 * 2**20) and given["provider_options"][1] == {}
    create_session(PNET, providers=[CPU])
    assert given["provider_options"] == [{}]


def test_tensorrt_is_followed_by_cuda(monkeypatch) -> None:
    import onnxruntime as ort

    from service.runtime import TENSORRT

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    assert resolve_providers("tensorrt") == [TENSORRT, CUDA, CPU]
    assert resolve_providers("trt,cpu") == [TENSORRT, CUDA, CPU]
    assert resolve_providers("cuda") == [CUDA, CPU]
    assert required_provider("tensorrt", [TENSORRT, CUDA, CPU]) == TENSORRT


@pytest.mark.skipif(
    CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA"
)
def test_auto_on_a_build_without_cuda_says_it_runs_on_the_cpu(settings, caplog) -> None:
    import logging

    from service.state import ServiceState

    caplog.set_level(logging.INFO, logger="service.state")
    state = ServiceState(settings.model_copy(update={"providers": "auto"}))
    assert state.providers == [CPU]
    assert any("no CUDA provider" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)


def test_computing_slots_default_to_the_provider_in_use(settings, monkeypatch) -> None:
    """PFVIT_MAX_CONCURRENT_INFERENCE=0: two requests at a time on the CPU (sharing the
    detector's threads), more on CUDA; a number given is taken as it is."""
    import onnxruntime as ort

    from service.state import CPU_COMPUTING_SLOTS, CUDA_COMPUTING_SLOTS, ServiceState

    cpu = ServiceState(settings.model_copy(update={"providers": "cpu", "max_concurrent_inference": 0}))
    assert cpu.computing_slots == CPU_COMPUTING_SLOTS == 2 and cpu.scheduler.gate.slots == 2
    assert (
        ServiceState(settings.model_copy(update={"providers": "cpu", "max_concurrent_inference": 3})).computing_slots
        == 3
    )
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    cuda = ServiceState(settings.model_copy(update={"providers": "cuda", "max_concurrent_inference": 0}))
    assert cuda.computing_slots == CUDA_COMPUTING_SLOTS > CPU_COMPUTING_SLOTS


def test_detector_threads_default_to_the_usable_cores(settings) -> None:
    from service.runtime import usable_cores
    from service.state import ServiceState

    assert ServiceState(settings.model_copy(update={"detect_threads": 0})).detect_threads == usable_cores() >= 1
    assert ServiceState(settings.model_copy(update={"detect_threads": 3})).detect_threads == 3


def test_a_loaded_service_runs_its_detector_on_threads_and_blas_on_one_thread(client, settings) -> None:
    """The running service: the detector shares each photo over its threads, whose sessions are
    single-threaded, and numpy's BLAS keeps to one thread (its own pool would oversubscribe)."""
    from threadpoolctl import threadpool_info

    from service.vision.mtcnn import session_threads

    state = client.app.state.service
    detector = state.require_pipeline().detector
    assert detector.threads is state.scheduler.detector_threads
    assert detector.threads.threads == state.detect_threads
    cascade = detector.cascade
    assert cascade is state.cascade
    per_session = session_threads(state.detect_threads, settings.intra_op_threads)
    assert all(
        s.get_session_options().intra_op_num_threads == per_session for s in (cascade.pnet, cascade.rnet, cascade.onet)
    )
    assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
