"""The shipped default model: its card and files, and what it does through the service."""

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.card import load_card, verify_files
from service.config import DEFAULT_EMOTION_MODEL, Settings
from service.state import ServiceState
from tests.conftest import wait_ready
from tests.images import encode

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "models" / DEFAULT_EMOTION_MODEL


def test_shipped_card_matches_its_files():
    card = load_card(MODEL_DIR)
    assert card.kind == "emotion" and set(card.graphs) == {"recognition", "poker_face"}
    verify_files(card, MODEL_DIR)  # every sha256 matches
    assert card.labels == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    metrics = card.training["metrics"]
    for key in ("accuracy", "macro_f1", "poker_face_neutral_share"):
        assert 0.0 <= metrics[key] <= 1.0
    for key in ("psnr_db", "ssim", "baseline_psnr_db", "baseline_ssim", "psnr_gain_db"):
        assert np.isfinite(metrics["poker_face"][key])
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert total <= 60 * 1024 * 1024


def test_default_settings_find_the_shipped_models():
    ServiceState(Settings(_env_file=None)).preflight()  # raises if anything is missing or altered


@pytest.fixture(scope="module")
def default_client():
    settings = Settings(providers="cpu", warmup_runs=1, _env_file=None)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def fresh_test_faces(size: int, per_class: int, seed: int):
    """Faces of held-out test identities, from a seed the training run never used."""
    from training.render.dataset import EMOTIONS, RenderedFaceDataset

    ds = RenderedFaceDataset("test", size, length=per_class * len(EMOTIONS), seed=seed)
    items = [ds[i] for i in range(len(ds))]
    faces = [np.rint(item["image"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8) for item in items]
    return faces, [EMOTIONS[int(item["label"])] for item in items]


def test_served_default_model_reads_rendered_expressions(default_client):
    size = load_card(MODEL_DIR).input.size[0]
    faces, truth = fresh_test_faces(size, per_class=2, seed=20261123)
    files = [("images", (f"{i}.png", encode(face, "PNG"), "image/png")) for i, face in enumerate(faces)]
    resp = default_client.post("/v1/recognize", params={"aligned": "true", "return_poker_face": "true"}, files=files)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == DEFAULT_EMOTION_MODEL
    predicted = [image["faces"][0]["label"] for image in body["images"]]
    correct = sum(p == t for p, t in zip(predicted, truth))
    assert correct >= len(truth) - 2, list(zip(truth, predicted))
    assert all(image["faces"][0]["poker_face_png"] for image in body["images"])
