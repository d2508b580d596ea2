"""On a GPU host (``pytest -m gpu`` with the `gpu` extra): every graph runs on CUDA (IOBinding
leaves its outputs there), CUDA results match the CPU's on the fixture photo, fp16 graphs hold
their parity on CUDA, /v1/models tells the truth, and two workers each serve on CUDA. Skipped
where ONNX Runtime offers no CUDA provider, or offers one that cannot load (no GPU or driver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import ModelLoadError
from service.runtime import CPU, CUDA, create_session
from tests.conftest import DEFAULT_MODEL_DIR

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


requires_cuda = pytest.mark.skipif(
    not _cuda_usable(), reason="no usable CUDA provider (needs a GPU, its driver and the gpu extra)"
)


@requires_cuda
def test_every_graph_runs_on_cuda_and_matches_the_cpu(astronaut_rgb) -> None:
    from service.models import EmotionModel
    from service.pipeline import DetectOptions, FacePipeline, StageTimer
    from service.vision.mtcnn import MTCNN

    results = {}
    for provider in (CUDA, CPU):
        providers = [provider, CPU] if provider == CUDA else [CPU]
        detector = MTCNN.from_dir(REPO / "models" / "mtcnn", providers=providers)
        model = EmotionModel.from_dir(DEFAULT_MODEL_DIR, providers=providers)
        if provider == CUDA:
            assert all(s.get_providers()[0] == CUDA for s in (detector.pnet, detector.rnet, detector.onet))
            assert all(p[0] == CUDA for p in model.providers.values())
            assert set(model._devices.values()) == {"cuda"}  # IOBinding keeps outputs on the GPU
        pipeline = FacePipeline(detector, model)
        (result,) = pipeline.run(
            [astronaut_rgb],
            DetectOptions(max_faces=5, min_face_size=20, threshold=0.7),
            StageTimer(),
            recognise=True,
            poker_face=True,
        )
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
    assert body["requested_providers"][0] == CUDA
    for model in body["models"]:
        for graph in model["graphs"].values():
            assert graph["providers"][0] == CUDA and graph["fallback"] is False


@requires_cuda
def test_fp16_parity_holds_on_cuda(tmp_path, astronaut_rgb) -> None:
    """The shipped model converted to fp16 as ``pfvit-export --fp16`` converts, on CUDA, where
    fp16 arithmetic is real (the CPU runs most of it in float32): within the exporter's bars."""
    pytest.importorskip("onnxconverter_common", reason="fp16 conversion needs the train extra")
    from service.models import EmotionModel
    from service.pipeline import DetectOptions, FacePipeline, StageTimer
    from service.vision.mtcnn import MTCNN
    from training.fp16 import FP16_LOGIT_MAX_ABS, FP16_POKER_PSNR_DB, GraphPair, compare_graphs, convert_to_fp16

    shipped = DEFAULT_MODEL_DIR
    for name in ("recognition", "poker_face"):
        convert_to_fp16(shipped / f"{name}.onnx", tmp_path / f"{name}.onnx")
    pair = GraphPair(shipped, tmp_path, providers=[CUDA, CPU])
    assert all(s.get_providers()[0] == CUDA for sessions in pair.sessions.values() for s in sessions.values())
    # The fixture photo's aligned face and 255 random faces (normalised as the service does).
    model = EmotionModel.from_dir(shipped, providers=[CPU])
    pipeline = FacePipeline(MTCNN.from_dir(REPO / "models" / "mtcnn", providers=[CPU]), model)
    (result,) = pipeline.run(
        [astronaut_rgb],
        DetectOptions(max_faces=1, min_face_size=20, threshold=0.7),
        StageTimer(),
        recognise=True,
        poker_face=False,
    )
    random_faces = np.random.default_rng(0).integers(0, 256, size=(255, *model.input_hw, 3), dtype=np.uint8)
    x = model._prepare(np.concatenate([np.stack([f.aligned for f in result.faces]), random_faces]))
    report = compare_graphs(pair, [x[:128], x[128:]])
    assert report["logits_max_abs_diff"] <= FP16_LOGIT_MAX_ABS, report
    assert report["argmax_agreement"] >= 0.99, (
        report
    )  # random faces include near-ties; the 99.5 % bar is for a test split
    assert report["poker_face_psnr_db"] >= FP16_POKER_PSNR_DB, report


@requires_cuda
def test_two_workers_each_serve_on_cuda(astronaut_bytes) -> None:
    import httpx

    from tools.loopback import serving

    env = {"PFVIT_PROVIDERS": "cuda", "PFVIT_WORKERS": "2", "PFVIT_LOG_LEVEL": "warning"}
    with serving(env, timeout_s=180.0) as url:
        seen = set()
        for _ in range(40):
            with httpx.Client(timeout=60) as client:  # a new connection each time: any worker may take it
                assert (
                    client.post(
                        url + "/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}
                    ).status_code
                    == 200
                )
                body = client.get(url + "/v1/models").json()
            assert all(g["providers"][0] == CUDA for m in body["models"] for g in m["graphs"].values())
            metrics = httpx.get(url + "/metrics").text
            seen = {
                line.split('pid="')[1].split('"')[0]
                for line in metrics.splitlines()
                if line.startswith("pfvit_worker_http_requests{")
            }
            if len(seen) == 2:
                break
        assert len(seen) == 2
