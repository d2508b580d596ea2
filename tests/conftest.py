"""Shared fixtures: the real fixture photo, a models folder with the shipped detector and a
hand-built emotion model, and an app client that waits for readiness."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import DEFAULT_EMOTION_MODEL

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ASTRONAUT = FIXTURES / "astronaut.png"
# The shipped default emotion model, wherever the settings point.
DEFAULT_MODEL_DIR = REPO / "models" / DEFAULT_EMOTION_MODEL
# Its classes in logit order, as its card gives them.
DEFAULT_LABELS: list[str] = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())["labels"]


@pytest.fixture(scope="session")
def astronaut_bytes() -> bytes:
    return ASTRONAUT.read_bytes()


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    return np.asarray(Image.open(ASTRONAUT).convert("RGB"))


@pytest.fixture(scope="session")
def crowd(astronaut_rgb: np.ndarray) -> np.ndarray:
    """(900, 1200, 3): the astronaut at three sizes on a grey canvas, so that the detector has
    several P-Net bands, several R-Net calls and several faces."""
    canvas = np.full((900, 1200, 3), 110, dtype=np.uint8)
    for side, (top, left) in ((420, (20, 30)), (260, (500, 600)), (160, (120, 900))):
        canvas[top : top + side, left : left + side] = np.asarray(
            Image.fromarray(astronaut_rgb).resize((side, side), Image.Resampling.BILINEAR)
        )
    return canvas


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: the shipped MTCNN and a stub emotion model (112 px, 8 labels)."""
    from tools.stub_model import write_stub_model

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / "mtcnn", root / "mtcnn")
    write_stub_model(root / "stub-emotion")
    return root


@pytest.fixture(scope="session")
def settings(models_dir: Path):
    from service.config import Settings

    return Settings(
        models_dir=models_dir,
        emotion_model="stub-emotion",
        providers="cpu",
        intra_op_threads=1,
        warmup_runs=1,
        _env_file=None,
    )


@pytest.fixture
def recognition_only_settings(tmp_path: Path, settings):
    """``settings`` with an emotion model that has no poker-face graph (recognition only)."""
    from tools.stub_model import write_stub_model

    shutil.copytree(settings.models_dir / "mtcnn", tmp_path / "mtcnn")
    write_stub_model(tmp_path / "recognition-only", with_poker_face=False)
    return settings.model_copy(update={"models_dir": tmp_path, "emotion_model": "recognition-only"})


def stub_server_env(settings, **overrides: str) -> dict[str, str]:
    """Environment of a loopback server on the test models (stub emotion model, CPU, one
    thread, one warm-up run), plus ``overrides`` (``PFVIT_*`` names)."""
    return {
        "PFVIT_MODELS_DIR": str(settings.models_dir),
        "PFVIT_EMOTION_MODEL": settings.emotion_model,
        "PFVIT_PROVIDERS": "cpu",
        "PFVIT_INTRA_OP_THREADS": "1",
        "PFVIT_WARMUP_RUNS": "1",
        **overrides,
    }


def wait_ready(client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service not ready after {timeout_s}s: {client.get('/readyz').json()}")


@pytest.fixture(scope="session")
def client(settings) -> Iterator:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def metrics_text(client, astronaut_bytes: bytes) -> str:
    """/metrics after the app has served one recognition and one poker-face request."""
    assert client.post("/v1/recognize", files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code == 200
    assert client.post("/v1/poker-face", files={"images": ("a.png", astronaut_bytes, "image/png")}).status_code == 200
    return client.get("/metrics").text


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whole benchmarks (``@pytest.mark.bench``) run only when a ``-m`` expression names them:
    the default suite, and ``-m "not slow"``, keep to their smoke tests."""
    if "bench" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a whole benchmark: select it with -m bench")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)
