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


@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA")
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


@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(), reason="this ONNX Runtime build offers CUDA")
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
