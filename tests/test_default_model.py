"""The shipped default model (PF-ViT on FERPlus): its card and files, and what it does to a real
photograph through the service."""

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.card import load_card, verify_files
from service.config import DEFAULT_EMOTION_MODEL, Settings
from service.state import ServiceState
from tests.conftest import ASTRONAUT, wait_ready

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "models" / DEFAULT_EMOTION_MODEL
# docs/default-model.md: a poker face must change a real face by more than this, in grey levels.
MIN_MEAN_ABS_CHANGE = 3.0
# What the shipped model measured on FERPlus test (docs/default-model.md), rounded down: a model
# swapped in by mistake, or a card written from the wrong run, falls below them.
SHIPPED_ACCURACY_FLOOR = 0.80
SHIPPED_RECALL_FLOOR = 0.40


def test_shipped_card_matches_its_files():
    card = load_card(MODEL_DIR)
    assert card.kind == "emotion" and set(card.graphs) == {"recognition", "poker_face"}
    verify_files(card, MODEL_DIR)  # every sha256 matches
    assert card.labels == ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    assert card.input.size == [48, 48]
    assert "FERPlus" in card.training["data"] and "research" in card.training["data"] and "MIT" in card.training["data"]
    metrics = card.training["metrics"]
    # Every FERPlus test face of label.csv's majority protocol, undetected faces included, in both views.
    for view in ("aligned", "photos", "raw_crops"):
        assert metrics["label"][view]["num_samples"] == 3137, view
    assert metrics["new"]["aligned"]["num_samples"] == 3153
    aligned = metrics["label"]["aligned"]
    recalls = aligned["per_class_accuracy"]
    assert aligned["accuracy"] >= SHIPPED_ACCURACY_FLOOR
    assert min(v for k, v in recalls.items() if k != "contempt") >= SHIPPED_RECALL_FLOOR
    for key in ("mean_abs_change", "ssim_to_input"):
        assert np.isfinite(metrics["poker_face_ferplus"][key])
    assert np.isfinite(metrics["poker_face_rendered"]["psnr_gain_db"])
    assert 0.0 <= metrics["poker_face_rendered"]["map_mass_mean"] <= 1.0
    # The two-sample test of poker faces against real neutral faces, and its baseline, on at
    # least 500 faces a side (docs/default-model.md).
    realism = metrics["realism"]
    for side in ("inputs", "poker_faces"):
        assert realism[side]["n_a"] == realism[side]["n_b"] == realism["n"] >= 500, side
        assert 0.0 <= realism[side]["auc"] <= 1.0 and len(realism[side]["fold_aucs"]) == realism["folds"], side
    assert (MODEL_DIR / "judge.pt").is_file()  # the instrument behind the poker-face numbers
    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert total <= 30 * 1024 * 1024


def _scored_sets(card) -> dict[str, dict]:
    """The card's evaluations that carry per-class figures (accuracy, F1, support)."""
    metrics = card.training["metrics"]
    return {
        f"{votes}.{view}": m
        for votes, views in metrics.items()
        if isinstance(views, dict)
        for view, m in views.items()
        if isinstance(m, dict) and "per_class_accuracy" in m
    }


def test_the_cards_accuracy_is_what_its_per_class_counts_give():
    """The card's headline figures, recomputed from its per-class ones, exactly; and better than
    always answering the commonest class. A figure edited by hand, or copied from another run,
    does not add up."""
    card = load_card(MODEL_DIR)
    scored = _scored_sets(card)
    assert {"label.aligned", "label.photos", "label.raw_crops", "new.aligned"} <= set(scored)
    for name, m in scored.items():
        support = m["support"]
        assert list(support) == card.labels and sum(support.values()) == m["num_samples"], name
        correct = {label: m["per_class_accuracy"][label] * support[label] for label in card.labels}
        # Per-class accuracies are counts of correct answers over the class's faces.
        assert all(abs(c - round(c)) < 1e-6 for c in correct.values()), name
        assert round(sum(correct.values())) / m["num_samples"] == pytest.approx(m["accuracy"], abs=1e-12), name
        assert np.mean(list(m["per_class_accuracy"].values())) == pytest.approx(m["mean_class_accuracy"], abs=1e-12)
        assert np.mean(list(m["per_class_f1"].values())) == pytest.approx(m["macro_f1"], abs=1e-12), name
        assert m["accuracy"] > max(support.values()) / m["num_samples"] + 0.05, f"{name}: no better than one class"


def test_the_model_page_states_the_cards_accuracy():
    """docs/default-model.md gives the card's figures, to the rounding it prints."""
    card = load_card(MODEL_DIR)
    page = (REPO / "docs" / "default-model.md").read_text(encoding="utf-8")
    for name, m in _scored_sets(card).items():
        assert f"| {100 * m['accuracy']:.1f} % |" in page, name


def test_default_settings_find_the_shipped_models():
    ServiceState(Settings(_env_file=None)).preflight()  # raises if anything is missing or altered


@pytest.fixture(scope="module")
def default_client():
    settings = Settings(providers="cpu", warmup_runs=1, _env_file=None)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_a_smiling_face_reads_as_happiness(default_client):
    resp = default_client.post(
        "/v1/recognize", files={"images": ("astronaut.png", ASTRONAUT.read_bytes(), "image/png")}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == DEFAULT_EMOTION_MODEL
    (face,) = body["images"][0]["faces"]
    assert face["label"] == "happiness", face["probabilities"]
    assert face["probabilities"]["happiness"] == max(face["probabilities"].values())


@pytest.fixture(scope="module")
def astronaut_face():
    """The fixture's face as the service finds it: the aligned crop the model is given, and its
    landmarks in that crop (left eye, right eye, nose, left and right mouth corner)."""
    from service.models import EmotionModel
    from service.pipeline import DetectOptions, FacePipeline, StageTimer
    from service.vision.align import estimate_similarity, template_landmarks
    from service.vision.mtcnn import MTCNN

    settings = Settings(_env_file=None)
    pipeline = FacePipeline(
        MTCNN.from_dir(REPO / "models" / "mtcnn", intra_op_threads=1),
        EmotionModel.from_dir(MODEL_DIR, providers=["CPUExecutionProvider"], intra_op_threads=1),
    )
    options = DetectOptions(
        max_faces=1, min_face_size=settings.default_min_face_size, threshold=settings.default_detection_threshold
    )
    (face,) = pipeline.find_faces(np.asarray(Image.open(ASTRONAUT).convert("RGB")), options, StageTimer())
    size = face.aligned.shape[0]
    matrix = estimate_similarity(np.asarray(face.landmarks, np.float64), template_landmarks(size))
    points = np.c_[np.asarray(face.landmarks, np.float64), np.ones(5)] @ matrix.T
    return face.aligned.astype(np.int16), points


def _poker_face_of_crop(client, crop: np.ndarray) -> np.ndarray:
    """The PNG from /v1/poker-face for an already aligned crop, as int16 RGB."""
    buf = BytesIO()
    Image.fromarray(crop.astype(np.uint8)).save(buf, format="PNG")
    resp = client.post(
        "/v1/poker-face",
        params={"aligned": "true"},
        files={"images": ("face.png", buf.getvalue(), "image/png")},
        headers={"Accept": "image/png"},
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png", resp.text
    return np.asarray(Image.open(BytesIO(resp.content)).convert("RGB")).astype(np.int16)


def test_the_poker_face_really_changes_a_real_face(default_client, astronaut_face):
    """The PNG from /v1/poker-face against the aligned face the model was given."""
    resp = default_client.post(
        "/v1/poker-face",
        files={"images": ("astronaut.png", ASTRONAUT.read_bytes(), "image/png")},
        headers={"Accept": "image/png"},
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    poker = np.asarray(Image.open(BytesIO(resp.content)).convert("RGB")).astype(np.int16)
    aligned, _ = astronaut_face
    assert poker.shape == aligned.shape
    change = float(np.abs(poker - aligned).mean())
    assert change > MIN_MEAN_ABS_CHANGE, f"the poker face changes the face by only {change:.2f} grey levels"


def test_the_poker_face_edits_the_mouth_where_this_face_has_it(default_client, astronaut_face):
    """The smile is taken out where this face's mouth is, not at a fixed row of the crop.

    The aligned crop is sent as it is and moved up and down (rows repeated at the edge), with
    ``aligned=true``: the mouth moves with it. Where the poker face differs from the crop is
    read as the service reads it, through the expression map (the face's own background level
    of change taken off: docs/expression-maps.md). Most of each map lies in the rows of this
    face's mouth, and its row centroid follows the shift. An editor that paints at template
    positions (a bar between nose and mouth wherever the face is) fails the second check."""
    from service.vision.expression_map import expression_map

    aligned, points = astronaut_face
    mouth_row = float(points[3:5, 1].mean())
    centroids = {}
    for dy in (-5, 0, 4):
        crop = np.roll(aligned, dy, axis=0)
        if dy > 0:
            crop[:dy] = crop[dy]
        elif dy < 0:
            crop[dy:] = crop[dy - 1]
        heat = expression_map(crop.astype(np.uint8), _poker_face_of_crop(default_client, crop).astype(np.uint8))
        rows = heat.sum(axis=1)  # [H]
        assert rows.sum() > 0, f"shift {dy}: the poker face leaves the face as it was"
        near = np.abs(np.arange(len(rows)) - (mouth_row + dy)) <= 5
        assert rows[near].sum() >= 0.5 * rows.sum(), (dy, np.round(rows, 1).tolist())
        centroids[dy] = float((rows * np.arange(len(rows))).sum() / rows.sum())
    moved = centroids[4] - centroids[-5]
    assert 0.6 * 9 <= moved <= 1.4 * 9, centroids
