"""The answer the README shows and the OpenAPI example are what the shipped model answers for
the fixture photo: the model's name, version and labels, the face's box, label and
probabilities. A new model that ships without its examples fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.openapi import POKER_FACE_EXAMPLE, RECOGNIZE_EXAMPLE
from service.app import create_app
from service.config import Settings
from tests.conftest import DEFAULT_MODEL_DIR, wait_ready

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> dict:
    """The JSON block after "The answer for the fixture photo" in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"The answer for the fixture photo.*?```json\n(.*?)```", text, re.S)
    assert found, "README.md lost its example answer"
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def shipped_answer(astronaut_bytes: bytes) -> dict:
    settings = Settings(
        models_dir=DEFAULT_MODEL_DIR.parent,
        emotion_model=DEFAULT_MODEL_DIR.name,
        providers="cpu",
        intra_op_threads=1,
        warmup_runs=1,
        _env_file=None,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        answer = client.post("/v1/recognize", files={"images": ("astronaut.png", astronaut_bytes, "image/png")})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("name", ["README", "OpenAPI"])
def test_the_examples_are_the_shipped_models_answer(name: str, shipped_answer: dict) -> None:
    example = readme_example() if name == "README" else RECOGNIZE_EXAMPLE
    assert example["model"]["name"] == shipped_answer["model"]["name"]
    assert example["model"]["version"] == shipped_answer["model"]["version"]
    assert example["labels"] == shipped_answer["labels"]
    (want,) = shipped_answer["images"][0]["faces"]
    (shown,) = example["images"][0]["faces"]
    assert shown["label"] == want["label"]
    for side in ("x1", "y1", "x2", "y2"):
        assert shown["box"][side] == pytest.approx(want["box"][side], abs=0.01)
    for label, p in want["probabilities"].items():
        assert shown["probabilities"][label] == pytest.approx(p, abs=0.0015), label
    assert shown["logits"] == pytest.approx(want["logits"], abs=0.015)
    assert POKER_FACE_EXAMPLE["model"] == RECOGNIZE_EXAMPLE["model"]
