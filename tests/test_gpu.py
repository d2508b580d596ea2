"""On a GPU host (``pytest -m gpu`` with the `gpu` extra): every graph runs on CUDA, CUDA results
match the CPU's on the fixture photo, and /v1/models tells the truth. Skipped where ONNX Runtime
offers no CUDA provider, or offers one that cannot load (no GPU or driver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import ModelLoadError
from service.runtime import CPU, CUDA, create_session

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parent.parent
# CUDA and CPU kernels sum in different orders: logits agree to this (float32, a 6-layer ViT),
# detection boxes to a fraction of a pixel, poker faces to a grey level.
LOGIT_TOL = 1e-3
BOX_TOL_PX = 0.5


def _cuda_usable() -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    try:
        create_session(REPO / "models" / "mtcnn" / "pnet.onnx", providers=[CUDA, CPU], required=CUDA)
    except ModelLoadError:
        return False
    return True


requires_cuda = pytest.mark.skipif(not _cuda_usable(), reason="no usable CUDA provider (needs a GPU, its driver and the gpu extra)")


@requires_cuda
def test_every_graph_runs_on_cuda_and_matches_the_cpu(astronaut_rgb) -> None:
    from service.models import EmotionModel
    from service.pipeline import DetectOptions, FacePipeline, StageTimer
    from service.vision.mtcnn import MTCNN

    results = {}
    for provider in (CUDA, CPU):
        providers = [provider, CPU] if provider == CUDA else [CPU]
        detector = MTCNN.from_dir(REPO / "models" / "mtcnn", providers=providers)
        model = EmotionModel.from_dir(REPO / "models" / "pfvit-micro-fer2013", providers=providers)
        if provider == CUDA:
            assert all(s.get_providers()[0] == CUDA for s in (detector.pnet, detector.rnet, detector.onet))
            assert all(p[0] == CUDA for p in model.providers.values())
        pipeline = FacePipeline(detector, model)
        (result,) = pipeline.run([astronaut_rgb], DetectOptions(max_faces=5, min_face_size=20, threshold=0.7), StageTimer(), recognise=True, poker_face=True)
        results[provider] = result
    cuda, cpu = results[CUDA], results[CPU]
    assert len(cuda.faces) == len(cpu.faces) == 1
    np.testing.assert_allclose(cuda.faces[0].box, cpu.faces[0].box, atol=BOX_TOL_PX)
    np.testing.assert_allclose(cuda.logits, cpu.logits, atol=LOGIT_TOL)
    assert np.abs(cuda.poker_faces.astype(int) - cpu.poker_faces).max() <= 1


@requires_cuda
def test_models_endpoint_reports_cuda(settings) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.conftest import wait_ready

    with TestClient(create_app(settings.model_copy(update={"providers": "cuda"}))) as client:
        wait_ready(client)
        body = client.get("/v1/models").json()
    for model in body["models"]:
        for graph in model["graphs"].values():
            assert graph["providers"][0] == CUDA
