"""Card <-> session contract, checksums, provider choice, start-up refusal."""

import json
import shutil

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.card import load_card, sha256_file, verify_files
from service.errors import CapabilityMissing, ModelLoadError
from service.models import EmotionModel, softmax
from service.runtime import CPU, resolve_providers
from service.scheduling import Scheduler
from tests.conftest import DEFAULT_MODEL_DIR
from tools.stub_model import LABELS, expected_logits, recognition_graph, write_stub_model


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]], np.float32))
    assert np.allclose(p[0], [0.5, 0.5, 0.0]) and np.allclose(p[1], 1 / 3)
    assert np.isfinite(p).all()


def test_stub_model_round_trip(tmp_path):
    write_stub_model(tmp_path / "m")
    model = EmotionModel.from_dir(tmp_path / "m", providers=[CPU])
    faces = np.random.default_rng(0).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    out = model.recognise(faces)
    assert out.logits.shape == (3, len(LABELS))
    assert np.allclose(out.logits, expected_logits(faces), atol=1e-4)
    assert np.array_equal(model.poker_faces(faces), faces)  # identity stub
    assert model.recognise(faces[:0]).logits.shape == (0, len(LABELS))
    with pytest.raises(ValueError):
        model.recognise(np.zeros((1, 64, 64, 3), np.uint8))


def test_batches_are_split_at_max_batch(tmp_path):
    write_stub_model(tmp_path / "m")
    model = EmotionModel.from_dir(tmp_path / "m", providers=[CPU], max_batch=4)
    faces = np.random.default_rng(1).integers(0, 256, size=(10, 112, 112, 3), dtype=np.uint8)
    assert np.allclose(model.recognise(faces).logits, expected_logits(faces), atol=1e-4)


def test_tampered_file_is_rejected(tmp_path):
    write_stub_model(tmp_path / "m")
    with open(tmp_path / "m" / "recognition.onnx", "ab") as fh:
        fh.write(b"\0")
    card = load_card(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="sha256"):
        verify_files(card, tmp_path / "m")


def test_missing_graph_file_is_rejected(tmp_path):
    write_stub_model(tmp_path / "m")
    (tmp_path / "m" / "poker_face.onnx").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        EmotionModel.from_dir(tmp_path / "m", providers=[CPU])


def test_label_count_must_match_logits(tmp_path):
    write_stub_model(tmp_path / "m")
    path = tmp_path / "m" / "card.json"
    data = json.loads(path.read_text())
    data["labels"] = LABELS[:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="logits"):
        EmotionModel.from_dir(tmp_path / "m", providers=[CPU])


def test_card_output_names_must_exist_in_graph(tmp_path):
    write_stub_model(tmp_path / "m", with_poker_face=False)
    model = recognition_graph(112)
    model.graph.output[0].name = "scores"
    model.graph.node[-1].output[0] = "scores"
    onnx.save(model, tmp_path / "m" / "recognition.onnx")
    data = json.loads((tmp_path / "m" / "card.json").read_text())
    data["graphs"]["recognition"]["sha256"] = sha256_file(tmp_path / "m" / "recognition.onnx")
    (tmp_path / "m" / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="logits"):
        EmotionModel.from_dir(tmp_path / "m", providers=[CPU])


def test_model_without_poker_face_graph(tmp_path):
    write_stub_model(tmp_path / "m", with_poker_face=False)
    model = EmotionModel.from_dir(tmp_path / "m", providers=[CPU])
    assert not model.has_poker_face
    with pytest.raises(CapabilityMissing):
        model.poker_faces(np.zeros((1, 112, 112, 3), np.uint8))


@pytest.mark.parametrize(
    "bad", [{"labels": []}, {"labels": ["a", "a"]}, {"kind": "emotion", "input": None}, {"schema": "other/9"}]
)
def test_malformed_cards(tmp_path, bad):
    write_stub_model(tmp_path / "m")
    path = tmp_path / "m" / "card.json"
    data = json.loads(path.read_text())
    data.update(bad)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError):
        load_card(tmp_path / "m")


def test_provider_resolution():
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers("auto")[-1] == CPU
    with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider.*was requested"):
        resolve_providers("NoSuchExecutionProvider")


def test_service_refuses_to_start_without_emotion_model(tmp_path, settings):
    shutil.copytree(settings.models_dir / "mtcnn", tmp_path / "mtcnn")
    app = create_app(settings.model_copy(update={"models_dir": tmp_path, "emotion_model": "absent"}))
    with pytest.raises(ModelLoadError, match="no emotion model at .*absent"):
        with TestClient(app):
            pass


def test_service_refuses_to_start_on_tampered_model(tmp_path, settings):
    shutil.copytree(settings.models_dir, tmp_path / "models")
    with open(tmp_path / "models" / "stub-emotion" / "poker_face.onnx", "ab") as fh:
        fh.write(b"\0")
    app = create_app(settings.model_copy(update={"models_dir": tmp_path / "models"}))
    with pytest.raises(ModelLoadError, match="sha256"):
        with TestClient(app):
            pass


def test_input_size_must_match_the_card(tmp_path):
    write_stub_model(tmp_path / "m", size=64)
    path = tmp_path / "m" / "card.json"
    data = json.loads(path.read_text())
    data["input"]["size"] = [112, 112]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="does not match the card"):
        EmotionModel.from_dir(tmp_path / "m", providers=[CPU])


def test_poker_face_routes_without_the_graph_answer_501(recognition_only_settings, astronaut_bytes):
    from tests.conftest import wait_ready

    app = create_app(recognition_only_settings)
    files = {"images": ("a.png", astronaut_bytes, "image/png")}
    with TestClient(app) as client:
        wait_ready(client)
        for resp in (
            client.post("/v1/poker-face", files=files),
            client.post("/v1/recognize", params={"return_poker_face": "true"}, files=files),
        ):
            assert resp.status_code == 501 and resp.json()["type"].endswith("/capability-missing"), resp.text
        assert client.post("/v1/recognize", files=files).status_code == 200  # recognition still serves


@pytest.mark.parametrize("batch_wait_s", [None, 0.002])
def test_iobinding_answers_bit_for_bit_what_session_run_answers(batch_wait_s):
    """The emotion graphs run through IOBinding (one copy each way on a GPU); on the CPU their
    rows are exactly those of a plain ``session.run``, with or without the micro-batcher."""
    from service.vision.align import to_uint8_images

    scheduler = Scheduler(slots=1, max_queue=1, detect_threads=1, max_batch=4, batch_wait_s=batch_wait_s)
    model = EmotionModel.from_dir(
        DEFAULT_MODEL_DIR, providers=[CPU], intra_op_threads=1, batched=scheduler.batched, max_batch=4
    )
    assert len(model.batchers) == (0 if batch_wait_s is None else 2)
    try:
        faces = np.random.default_rng(3).integers(
            0, 256, size=(7, *model.input_hw, 3), dtype=np.uint8
        )  # two calls of 4 and 3
        x = model._prepare(faces)
        for graph, output, got in (
            ("recognition", "logits", model.recognise(faces).logits),
            ("poker_face", "poker_face", model._run_batched("poker_face", x)),
        ):
            session = model.sessions[graph]
            want = np.concatenate([session.run([output], {"image": x[i : i + 4]})[0] for i in (0, 4)])
            assert got.dtype == want.dtype and np.array_equal(got, want), graph
        assert np.array_equal(model.poker_faces(faces), to_uint8_images(want))
    finally:
        scheduler.close()


def test_graph_precision_comes_from_the_card(tmp_path):
    """Cards written before graphs had a precision read as fp32; anything but fp32/fp16 is refused."""
    write_stub_model(tmp_path / "m")
    path = tmp_path / "m" / "card.json"
    data = json.loads(path.read_text())
    for graph in data["graphs"].values():
        del graph["precision"]  # as cards were before
    path.write_text(json.dumps(data))
    assert {g.precision for g in load_card(tmp_path / "m").graphs.values()} == {"fp32"}
    data["graphs"]["recognition"]["precision"] = "fp16"
    path.write_text(json.dumps(data))
    assert load_card(tmp_path / "m").graphs["recognition"].precision == "fp16"
    data["graphs"]["recognition"]["precision"] = "int8"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="precision"):
        load_card(tmp_path / "m")
