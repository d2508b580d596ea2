"""``pfvit-align-dataset`` on real photos: detected faces, the fixed fallback for undetected
ones, the per-image table, and the promise that a served request reaches the model in the
geometry training data was prepared in."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from service.vision.align import align_face
from service.vision.imaging import decode_image, encode_png, resize_rgb
from training.data import align_dataset

REPO = Path(__file__).resolve().parents[2]
MTCNN_DIR = REPO / "models" / "mtcnn"
ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"
# The fixture photo's face (box from MTCNN), as a loosely centred 48 px grey crop: FER2013's form.
FACE_BOX = (170, 50, 280, 185)


def fer_like_crop() -> np.ndarray:
    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    x1, y1, x2, y2 = FACE_BOX
    grey = np.asarray(Image.fromarray(rgb[y1:y2, x1:x2]).convert("L").resize((48, 48), Image.Resampling.BILINEAR))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "landmarks.csv").open(newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_help() -> None:
    with pytest.raises(SystemExit) as info:
        align_dataset.main(["--help"])
    assert info.value.code == 0


def test_real_photo_failures_and_resume(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "happy").mkdir(parents=True)
    shutil.copy(ASTRONAUT, raw / "happy" / "astronaut.png")
    (raw / "neutral").mkdir()
    (raw / "neutral" / "wall.png").write_bytes(encode_png(np.full((64, 64, 3), 128, np.uint8)))
    (raw / "neutral" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "aligned"
    assert align_dataset.main([str(raw), str(out), "--size", "64", "--models", str(MTCNN_DIR)]) == 0

    crop = np.asarray(Image.open(out / "happy" / "astronaut.png"))
    assert crop.shape == (64, 64, 3) and crop.std() > 20  # a picture, not an empty border
    methods = {k: v["method"] for k, v in _rows(out).items()}
    assert methods == {
        "happy/astronaut.png": "detected",
        "neutral/broken.png": "invalid-image",
        "neutral/wall.png": "no-face",
    }
    assert not (out / "neutral" / "wall.png").exists()  # no fallback asked for: no crop at all
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["happy"] == {"detected": 1}
    assert summary["counts"]["*"] == {"detected": 1, "invalid-image": 1, "no-face": 1}

    # A rerun only does what is left: the crop written before is not touched.
    (out / "happy" / "astronaut.png").write_bytes(b"kept")
    assert align_dataset.main([str(raw), str(out), "--size", "64", "--models", str(MTCNN_DIR)]) == 0
    assert (out / "happy" / "astronaut.png").read_bytes() == b"kept"


def test_fallback_is_the_detected_faces_mean_transform(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    face = fer_like_crop()
    for name, image in {"Training_1.png": face, "Training_2.png": face[:, ::-1].copy()}.items():
        (raw / "happy").mkdir(parents=True, exist_ok=True)
        (raw / "happy" / name).write_bytes(encode_png(image))
    flat = np.full((48, 48, 3), 90, np.uint8)
    (raw / "neutral").mkdir()
    (raw / "neutral" / "Training_3.png").write_bytes(encode_png(flat))
    out = tmp_path / "aligned"
    args = ["--size", "64", "--pad", "24", "--upscale", "3", "--fallback", "mean", "--models", str(MTCNN_DIR)]
    assert align_dataset.main([str(raw), str(out), *args]) == 0

    rows = _rows(out)
    assert [rows[f"happy/Training_{i}.png"]["method"] for i in (1, 2)] == ["detected", "detected"]
    assert rows["neutral/Training_3.png"]["method"] == "fallback"
    summary = json.loads((out / "summary.json").read_text())
    mean = np.array(summary["fallback_landmarks_relative"])
    detected = [
        np.array([[float(r[f"x{i}"]) / float(r["width"]), float(r[f"y{i}"]) / float(r["height"])] for i in range(1, 6)])
        for r in rows.values()
        if r["method"] == "detected"
    ]
    assert np.allclose(mean, np.mean(detected, axis=0), atol=1e-5)
    # The fallback crop is that one transform applied to the prepared (padded, upscaled) photo.
    prepared = resize_rgb(np.pad(flat, ((24, 24), (24, 24), (0, 0)), mode="edge"), (288, 288))
    expected, _ = align_face(prepared, mean * 288, 64)
    got = np.asarray(Image.open(out / "neutral" / "Training_3.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding of the stored landmarks

    # A rerun searches no photo again and gives the same table and crops.
    before = (out / "neutral" / "Training_3.png").read_bytes()
    assert align_dataset.main([str(raw), str(out), *args]) == 0
    assert _rows(out) == rows
    assert (out / "neutral" / "Training_3.png").read_bytes() == before


def test_served_request_reaches_the_model_as_training_data_was_prepared(tmp_path: Path) -> None:
    """The crop align-dataset writes for a FER2013-style face equals the crop the service
    feeds its model when that face is uploaded the way the service is meant to see it."""
    from service.config import Settings
    from service.models import EmotionModel
    from service.pipeline import DetectOptions, FacePipeline, StageTimer
    from service.vision.mtcnn import MTCNN

    settings = Settings(_env_file=None)
    model = EmotionModel.from_dir(
        REPO / "models" / settings.emotion_model, providers=["CPUExecutionProvider"], intra_op_threads=1
    )
    size = model.input_hw[0]
    raw = tmp_path / "raw" / "happy"
    raw.mkdir(parents=True)
    (raw / "Training_1.png").write_bytes(encode_png(fer_like_crop()))
    out = tmp_path / "aligned"
    args = ["--size", str(size), "--pad", "24", "--upscale", "3", "--models", str(MTCNN_DIR)]
    assert align_dataset.main([str(tmp_path / "raw"), str(out), *args]) == 0
    trained_on = np.asarray(Image.open(out / "happy" / "Training_1.png"))
    assert trained_on.shape == (size, size, 3)

    upload = encode_png(align_dataset.prepare(fer_like_crop(), 24, 3.0))
    pipeline = FacePipeline(MTCNN.from_dir(MTCNN_DIR, intra_op_threads=1), model)
    options = DetectOptions(
        max_faces=settings.default_max_faces,
        min_face_size=settings.default_min_face_size,
        threshold=settings.default_detection_threshold,
    )
    faces = pipeline.find_faces(decode_image(upload, max_pixels=settings.max_image_pixels), options, StageTimer())
    assert len(faces) == 1
    assert np.array_equal(faces[0].aligned, trained_on)
