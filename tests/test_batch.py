"""`pfvit-batch` on a local Ray instance with this machine's CPUs, over about a hundred files
(the fixture photo and transforms of it, rendered faces, a face-less picture, a short rendered
video, corrupt files): its rows must equal what /v1/recognize answers for the same images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.conftest import ASTRONAUT, REPO, wait_ready
from tests.images import write_rendered_video

pytest.importorskip("ray.data", reason="Ray is not installed (pip install -e '.[ray,cpu]')")
pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[ray,cpu]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install -e '.[ray,cpu]')")

from pfvit_batch.cli import RowSink, find_inputs, parse_args  # noqa: E402
from pfvit_batch.plan import READ_CPUS, plan_actors, spare_cpus  # noqa: E402

BATCH_TIMEOUT_S = 300  # a Ray job that starves never ends by itself
BOX_TOL_PX = 1e-3
PROB_TOL = 1e-5
EVERY = 3  # video frames sampled as `--every 3`


# --- sizing (no Ray) -------------------------------------------------------------------------


def test_actors_leave_cpus_for_the_reading_tasks():
    plan = plan_actors(2)
    # Two actors at one CPU each starve the reading tasks on a 2-CPU instance; here they leave one.
    assert (plan.actors, plan.num_cpus, plan.num_gpus, plan.providers) == (2, 0.5, 0.0, "cpu")
    for cpus in (1, 2, 3, 4, 16, 64, 256):
        plan = plan_actors(cpus)
        assert plan.actors == cpus
        left = cpus - plan.actors * plan.num_cpus
        assert left >= READ_CPUS and (cpus == 1 or left >= spare_cpus(cpus) - 1e-9), (cpus, plan)
    assert plan_actors(8, threads=2).actors == 4
    assert plan_actors(8, actors=3).num_cpus == 1.0  # never more than its threads
    assert plan_actors(8, actors=3, threads=4).num_cpus == 2.33


def test_gpu_actors_run_on_cuda_only_and_fit_the_gpus():
    plan = plan_actors(16, 2, gpus_per_actor=0.5)
    assert (plan.actors, plan.num_gpus, plan.providers) == (4, 0.5, "cuda")
    assert plan.actors * plan.num_cpus <= 16 - spare_cpus(16)
    with pytest.raises(ValueError, match="has 0"):
        plan_actors(16, 0, gpus_per_actor=1)
    with pytest.raises(ValueError, match="no CPU"):
        plan_actors(0)


def test_usage_errors(tmp_path):
    for argv, message in (
        ([str(ASTRONAUT), "--output", "-", "--format", "parquet"], "Parquet needs a file"),
        ([str(ASTRONAUT), "--every", "0"], "--every must be at least 1"),
        ([str(ASTRONAUT), "--actors", "0"], "--actors must be at least 1"),
        ([str(ASTRONAUT), "--max-faces", "0"], "--max-faces: Input should be greater than or equal to 1"),
        ([str(ASTRONAUT), "--max-faces", "5000"], "max_faces: 5000 is over this service's limit of 100"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pfvit_batch", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert parse_args([str(ASTRONAUT), "-o", str(tmp_path / "x.parquet")]).format == "parquet"


def test_globs_and_folders_are_read_like_pfvit_recognize(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("1.png", "2.jpg", "notes.txt"):
        (tmp_path / "a" / name).write_bytes(b"x")
    sources, missing = find_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "*.png"), str(tmp_path / "none*.jpg")])
    assert [s.name for s in sources] == ["a__1", "a__2", "1"]
    assert missing == [(str(tmp_path / "none*.jpg"), "no file matches the pattern")]


def test_jsonl_rows_are_one_json_object_a_line(tmp_path):
    sink = RowSink(str(tmp_path / "rows.jsonl"), "jsonl", ["a", "b"])
    sink.write({"source": "x", "face": 0, "probabilities": {"a": 0.25, "b": 0.75}})
    sink.write({"source": "y", "face": None, "error": "Invalid image: ..."})
    sink.close()
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["probabilities"] == {"a": 0.25, "b": 0.75} and rows[1]["error"].startswith("Invalid image")


# --- the job against the API -----------------------------------------------------------------


def photo_set(folder: Path) -> dict[str, np.ndarray | None]:
    """About a hundred inputs; each name -> the pixels the API should see, or None for a file
    it must refuse. Faces: the fixture, transforms of it, rendered faces; a blank picture."""
    from training.render.dataset import IDENTITY_RANGES, sample_parameters
    from training.render.face import EMOTIONS, Scene, prototype_aus, render_scene

    astronaut = Image.open(ASTRONAUT).convert("RGB")
    files: dict[str, bytes] = {"astronaut.png": ASTRONAUT.read_bytes()}

    def add(name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        files[name] = buf.getvalue()

    for angle in range(-20, 21, 5):
        add(
            f"turned/{angle:+03d}.png",
            astronaut.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(40, 40, 40)),
            "PNG",
        )
    for scale in (0.5, 0.7, 0.9, 1.3, 1.7, 2.6):
        add(
            f"scaled/{scale}.jpg",
            astronaut.resize((round(512 * scale),) * 2, Image.Resampling.LANCZOS),
            "JPEG",
            quality=90,
        )
    for k, (left, top) in enumerate([(0, 0), (60, 0), (100, 20), (120, 30), (0, 40), (150, 10)]):
        add(f"cropped/{k}.webp", astronaut.crop((left, top, left + 340, top + 300)), "WEBP", quality=90)
    for k, factor in enumerate((0.5, 0.7, 1.3, 1.6)):
        add(f"light/{k}.jpg", ImageEnhance.Brightness(astronaut).enhance(factor), "JPEG", quality=85)
        add(f"contrast/{k}.bmp", ImageEnhance.Contrast(astronaut).enhance(factor), "BMP")
    for quality in (20, 40, 60, 75, 95):
        add(f"quality/{quality}.jpg", astronaut, "JPEG", quality=quality)
    add("mirrored.png", ImageOps.mirror(astronaut), "PNG")
    add("grey.png", ImageOps.grayscale(astronaut), "PNG")
    canvas = Image.new("RGB", (1200, 800), (200, 190, 170))
    for x, y, side in [(20, 40, 300), (400, 300, 200), (800, 100, 380)]:
        canvas.paste(astronaut.resize((side, side)), (x, y))
    add("group.jpg", canvas, "JPEG", quality=92)
    for k in range(52):
        _, identity, _, _, _ = sample_parameters((20261203, k), IDENTITY_RANGES["test"])
        render = render_scene(
            identity,
            prototype_aus(EMOTIONS[k % len(EMOTIONS)]),
            Scene(),
            canvas=(256, 256),
            face_px=96 + k % 5 * 16,
            centre=(128.0, 130.0),
        )
        add(f"rendered/{k:02d}.png", Image.fromarray(render.image), "PNG")
    add("blank.png", Image.new("RGB", (200, 150), (120, 120, 120)), "PNG")
    expected: dict[str, np.ndarray | None] = {}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        expected[name] = data
    (folder / "broken.jpg").write_bytes(files["quality/95.jpg"][:2500])  # truncated
    (folder / "garbage.png").write_bytes(os.urandom(4096))
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    (folder / "notes.txt").write_text("not a photo: never read")
    expected.update({"broken.jpg": None, "garbage.png": None})
    return expected


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The inputs, and pfvit-batch's Parquet rows for them from a local 2-CPU Ray instance."""
    root = tmp_path_factory.mktemp("batch")
    photos = root / "photos"
    photos.mkdir()
    expected = photo_set(photos)
    clip = root / "clip.mp4"
    write_rendered_video(clip)
    out = root / "faces.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFVIT_")}
    cmd = [
        sys.executable,
        "-m",
        "pfvit_batch",
        str(photos),
        str(clip),
        "--every",
        str(EVERY),
        "--num-cpus",
        "2",
        "--batch-size",
        "8",
        "--output",
        str(out),
        "--poker-face",
        str(root / "poker"),
        "--expression-map",
        str(root / "maps"),
        "--stats-json",
        str(root / "stats.json"),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=BATCH_TIMEOUT_S)
    return {
        "root": root,
        "photos": photos,
        "clip": clip,
        "expected": expected,
        "proc": proc,
        "rows": pq.read_table(out).to_pylist(),
    }


@pytest.fixture(scope="module")
def api():
    """/v1/recognize of the shipped models, in process."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    settings = Settings(providers="cpu", warmup_runs=1, _env_file=None)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def recognize(api, name: str, data: bytes) -> dict:
    response = api.post("/v1/recognize", files={"images": (name, data, "application/octet-stream")})
    return {"status": response.status_code, **response.json()}


def assert_rows_match(rows: list[dict], answer: dict, where: str) -> None:
    """One image's batch rows against the API's answer for it."""
    assert answer["status"] == 200, (where, answer)
    (image,) = answer["images"]
    faces = image["faces"]
    assert len(rows) == max(1, len(faces)), where
    for row in rows:
        assert row["error"] is None and (row["width"], row["height"]) == (image["width"], image["height"]), where
    if not faces:
        assert rows[0]["face"] is None and rows[0]["label"] is None, where
        return
    for k, (row, face) in enumerate(zip(rows, faces)):
        assert row["face"] == k and row["label"] == face["label"], where
        got = [row["box"][c] for c in ("x1", "y1", "x2", "y2")]
        want = [face["box"][c] for c in ("x1", "y1", "x2", "y2")]
        assert np.allclose(got, want, rtol=0, atol=BOX_TOL_PX), (where, got, want)
        assert np.allclose(np.array(row["landmarks"]), np.array(face["landmarks"]), rtol=0, atol=BOX_TOL_PX), where
        assert abs(row["score"] - face["score"]) <= PROB_TOL, where
        labels = list(face["probabilities"])
        assert np.allclose(
            [row["probabilities"][label] for label in labels],
            [face["probabilities"][label] for label in labels],
            rtol=0,
            atol=PROB_TOL,
        ), where
        assert np.allclose(row["logits"], face["logits"], rtol=0, atol=PROB_TOL), where


def test_batch_rows_equal_the_api_answers(job, api):
    proc, rows, expected, photos = job["proc"], job["rows"], job["expected"], job["photos"]
    assert proc.returncode == 1, proc.stderr  # the corrupt files
    assert len(expected) >= 90
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)

    compared_faces = 0
    for name, data in expected.items():
        source = str(photos / name)
        answer = recognize(api, name, (photos / name).read_bytes())
        if data is None:  # the API refuses it; the batch writes one error row and carries on
            assert answer["status"] == 422, (name, answer)
            (row,) = by_source[source]
            assert row["error"].startswith(answer["title"]) and row["face"] is None, row
            continue
        assert_rows_match(by_source[source], answer, name)
        compared_faces += len(answer["images"][0]["faces"])
    assert compared_faces >= 80
    assert by_source[str(photos / "blank.png")][0]["face"] is None
    assert len(by_source[str(photos / "group.jpg")]) == 3
    assert str(photos / "notes.txt") not in by_source
    (broken_video,) = by_source[str(photos / "broken.mp4")]
    assert broken_video["error"].startswith("cannot decode the video"), broken_video

    # Rows come in the order of the inputs (the folder's sorted walk, then the video).
    order = list(dict.fromkeys(r["source"] for r in rows))
    assert order[-1] == str(job["clip"]) and order[:-1] == sorted(order[:-1])

    stats = json.loads((job["root"] / "stats.json").read_text())
    assert stats["errors"] == 3 and stats["images"] == len(expected) - 2 and stats["frames"] == 4
    assert f"{len(expected) - 2} image(s) and 4 video frame(s) analysed" in proc.stderr


def test_video_frames_are_sampled_like_pfvit_recognize_and_match_the_api(job, api):
    from pfvit_client.video import sample_frames

    clip = str(job["clip"])
    rows = [r for r in job["rows"] if r["source"] == clip]
    frames = list(sample_frames(clip, every=EVERY))
    assert [r["frame"] for r in rows] == [f.index for f in frames] == [0, 3, 6, 9]
    assert [r["time_s"] for r in rows] == [round(f.time_s, 4) for f in frames] == [0.0, 0.75, 1.5, 2.25]
    for frame, row in zip(frames, rows):
        # Frames go to the pipeline as decoded pixels: the API sees the same pixels in a PNG.
        buf = io.BytesIO()
        Image.fromarray(frame.image).save(buf, format="PNG")
        assert_rows_match([row], recognize(api, f"frame{frame.index}.png", buf.getvalue()), f"frame {frame.index}")


def test_pictures_are_saved_under_pfvit_recognize_names(job, api):
    root, rows = job["root"], job["rows"]
    faces = [r for r in rows if r["face"] is not None]
    assert all(r["poker_face_file"] and r["expression_map_file"] for r in faces)
    assert len(list((root / "poker").iterdir())) == len(list((root / "maps").iterdir())) == len(faces)
    row = next(r for r in rows if r["source"] == str(job["photos"] / "astronaut.png"))
    assert Path(row["poker_face_file"]).name == "photos__astronaut.face0.poker.png"
    assert Path(row["expression_map_file"]).name == "photos__astronaut.face0.map.png"
    answer = api.post(
        "/v1/recognize?return_poker_face=true&return_expression_map=true",
        files={"images": ("a.png", ASTRONAUT.read_bytes(), "image/png")},
    ).json()
    import base64

    face = answer["images"][0]["faces"][0]
    assert Path(row["poker_face_file"]).read_bytes() == base64.b64decode(face["poker_face_png"])
    assert Path(row["expression_map_file"]).read_bytes() == base64.b64decode(face["expression_map_png"])
    video_row = next(r for r in rows if r["frame"] == 3)
    assert Path(video_row["poker_face_file"]).name == "clip.frame000003.face0.poker.png"


def test_an_actor_batch_of_one_bad_file_gives_an_error_row_not_a_failure(astronaut_bytes):
    """The actor alone (no Ray): a refused image, alone or among good ones, is an error row."""
    import pyarrow as pa

    from pfvit_batch.work import Recognizer, Wanted, _item
    from service.config import Settings
    from service.pipeline import DetectOptions

    settings = Settings(providers="cpu", detect_threads=1, intra_op_threads=1, warmup_runs=1, _env_file=None)
    options = DetectOptions(
        max_faces=5, min_face_size=settings.default_min_face_size, threshold=settings.default_detection_threshold
    )
    actor = Recognizer(settings, options, Wanted())
    good, bad = _item(0, "a.png", data=astronaut_bytes), _item(1, "b.jpg", data=b"not an image")
    try:
        for items, errors in (([bad], [True]), ([good, bad], [False, True]), ([bad, good], [True, False])):
            out = actor(pa.Table.from_pylist(items)).to_pylist()
            rows = [json.loads(o["row"]) for o in out]
            assert [r["error"] is not None for r in rows] == errors, rows
            assert all(r["error"].startswith("Invalid image") for r in rows if r["error"])
            assert [r["label"] for r in rows if not r["error"]] == ["happiness"] * (good in items)
    finally:
        actor.state.close()
