"""MTCNN on ONNX Runtime: cascade pieces on hand-made inputs, and the shipped detector on the
astronaut photo against facenet-pytorch's own output (recorded once with its default settings)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.card import load_card, verify_files
from service.errors import ModelLoadError
from service.vision.mtcnn import (
    DEFAULT_FACTOR,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_THRESHOLDS,
    INLINE,
    MTCNN,
    CascadeTuning,
    FaceDetection,
    as_pil,
    crop_patches,
    crop_windows,
    generate_boxes,
    level_size,
    nms,
    normalise_pixels,
    pnet_bands,
    pnet_grid_size,
    pooling_matrix,
    pyramid_levels,
    pyramid_scales,
    regress_boxes,
    session_threads,
    square_boxes,
)
from tools.detector_fidelity import FACENET_BOX, FACENET_LANDMARKS, FACENET_SCORE

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "mtcnn"

# facenet_pytorch.MTCNN() (2.6.0, defaults) on tests/fixtures/astronaut.png.
REF_BOX, REF_SCORE, REF_LANDMARKS = FACENET_BOX, FACENET_SCORE, FACENET_LANDMARKS
# Our pyramid is a chained box filter where facenet resizes each level from the full image, so
# P-Net sees slightly different pixels and the refined boxes move by up to ~2 px (measured
# 2.0 px on the box, 1.6 px on the landmarks of this 90 px face); the crops fed to R-Net and
# O-Net are facenet's exactly.
TOL_PX = 2.5


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN.from_dir(MODEL_DIR, intra_op_threads=1)


@pytest.fixture(scope="module")
def small_face_canvas(astronaut_rgb: np.ndarray) -> np.ndarray:
    """(384, 384, 3) grey canvas with the astronaut shrunk to 128 px in the middle (face ~22 px)."""
    small = np.asarray(Image.fromarray(astronaut_rgb).resize((128, 128), Image.BILINEAR))
    canvas = np.full((384, 384, 3), 128, dtype=np.uint8)
    canvas[128:256, 128:256] = small
    return canvas


# --- pieces -------------------------------------------------------------------------------


def test_nms_union_drops_overlaps_above_threshold() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU(0, 1) = 81 / 119 = 0.68; box 3 duplicates box 0 (IoU 1).
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    # Highest score first, whatever the input order.
    assert nms(boxes[::-1].copy(), scores[::-1].copy(), 0.5).tolist() == [3, 1]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0


def test_nms_min_mode_suppresses_a_box_inside_another() -> None:
    big_and_inner = np.array([[0, 0, 99, 99], [10, 10, 29, 29]], np.float32)
    scores = np.array([0.9, 0.95], np.float32)
    # IoU is 400 / 10000 (kept by union NMS) but the inner box lies wholly inside: IoM = 1.
    assert nms(big_and_inner, scores, 0.7).tolist() == [1, 0]
    assert nms(big_and_inner, scores, 0.7, mode="min").tolist() == [1]
    with pytest.raises(ValueError):
        nms(big_and_inner, scores, 0.7, mode="max")


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_blocks_agree_with_the_classic_loop(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.vision.mtcnn as mtcnn_module

    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 200, (400, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 60, (400, 2))], axis=1).astype(np.float32)
    scores = rng.random(400).astype(np.float32)
    # The classic greedy loop: keep the best box, drop what overlaps it, repeat.
    order = list(np.argsort(-scores, kind="stable"))
    want = []
    while order:
        best, order = order[0], order[1:]
        want.append(best)
        over = mtcnn_module._overlap(boxes[best].astype(np.float64), boxes[order].astype(np.float64), mode)
        order = [o for o, v in zip(order, over, strict=True) if v <= 0.5]
    for block in (7, 256):  # several blocks, and one
        monkeypatch.setattr(mtcnn_module, "_NMS_BLOCK", block)
        np.testing.assert_array_equal(nms(boxes, scores, 0.5, mode), want)
    assert np.all(np.diff(scores[want]) <= 0)  # best first


def test_regress_boxes_exclusive_and_inclusive_sizes() -> None:
    boxes = np.array([[10, 20, 30, 60]], np.float32)
    offsets = np.array([[0.1, -0.1, 0.2, 0.5]], np.float32)
    # After P-Net facenet measures w = x2 - x1 (20, 40); after R/O-Net w = x2 - x1 + 1 (21, 41).
    np.testing.assert_allclose(regress_boxes(boxes, offsets, inclusive=False), [[12, 16, 34, 80]], atol=1e-5)
    np.testing.assert_allclose(regress_boxes(boxes, offsets, inclusive=True), [[12.1, 15.9, 34.2, 80.5]], atol=1e-5)


def test_square_boxes_keeps_centre_and_takes_longer_side() -> None:
    boxes = np.array([[10, 20, 30, 60], [0, 0, 50, 10]], np.float32)
    np.testing.assert_allclose(square_boxes(boxes), [[0, 20, 40, 60], [0, -20, 50, 30]])


def test_pyramid_scales_follow_facenet() -> None:
    scales = pyramid_scales(512, 512, 20, 0.709)
    # 512 * 0.6 * 0.709**k >= 12 holds for k = 0..9.
    assert len(scales) == 10
    np.testing.assert_allclose(scales, [0.6 * 0.709**k for k in range(10)], rtol=1e-12)
    assert level_size(512, 512, scales[0]) == (308, 308)
    assert pyramid_scales(480, 640, 40, 0.709)[0] == pytest.approx(0.3)
    assert len(pyramid_scales(480, 640, 40, 0.709)) < len(pyramid_scales(480, 640, 20, 0.709))
    assert pyramid_scales(100, 100, 120, 0.709) == []  # no level can hold a 12 px cell
    with pytest.raises(ValueError):
        pyramid_scales(100, 100, 0, 0.709)


def test_generate_boxes_maps_cells_to_image_pixels() -> None:
    prob = np.zeros((6, 8), np.float32)
    prob[3, 5] = 0.9  # row 3, column 5
    reg = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    out = generate_boxes(reg, prob, scale=0.5, threshold=0.6)
    assert out.shape == (1, 9)
    # x1 = floor((2 * 5 + 1) / 0.5), y1 = floor((2 * 3 + 1) / 0.5), x2/y2 add the 12 px cell.
    np.testing.assert_allclose(out[0, :5], [22, 14, 44, 36, 0.9], rtol=1e-6)
    np.testing.assert_array_equal(out[0, 5:], reg[:, 3, 5])


def _adaptive_avg_pool(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Slow loop reference of torch's adaptive average pooling rule."""
    h, w = image.shape[:2]
    out = np.zeros((*size, image.shape[2]))
    for i in range(size[0]):
        r0, r1 = (i * h) // size[0], -((-(i + 1) * h) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * w) // size[1], -((-(j + 1) * w) // size[1])
            out[i, j] = image[r0:r1, c0:c1].reshape(-1, image.shape[2]).mean(axis=0)
    return out


@pytest.mark.parametrize(("length", "size"), [(4, 6), (7, 5), (13, 29), (24, 24), (50, 24)])
def test_pooling_matrix_is_adaptive_average_pooling(length: int, size: int) -> None:
    line = np.random.default_rng(1).integers(0, 256, (length, 1, 1), dtype=np.uint8)
    pooled = pooling_matrix(length, size) @ line[:, 0, 0].astype(np.float32)
    np.testing.assert_allclose(pooled, _adaptive_avg_pool(line, (size, 1))[:, 0, 0], atol=1e-4)


@pytest.mark.parametrize("size", [(769, 769), (501, 300), (37, 1000), (13, 15), (400, 401)])
def test_pnet_bands_give_the_whole_levels_output(detector: MTCNN, size: tuple[int, int]) -> None:
    level = np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8)
    reg, prob = detector.pnet.run(None, {detector.pnet.get_inputs()[0].name: normalise_pixels(level)[None]})[:2]
    assert prob.shape[2:] == pnet_grid_size(*size)
    for max_pixels in (5_000, 40_000, 10**9):
        parts = [detector._pnet_band(level, *band) for band in pnet_bands(*size, max_pixels)]
        banded_reg = np.concatenate([r for r, _ in parts], axis=1)
        banded_prob = np.concatenate([p for _, p in parts], axis=0)
        np.testing.assert_array_equal(banded_prob, prob[0, 1])
        np.testing.assert_array_equal(banded_reg, reg[0])
    assert len(pnet_bands(*size, 5_000)) > 1 or size[0] < 40


def test_pyramid_levels_are_area_averages() -> None:
    # A smooth picture, as photos are at the scale of a pyramid step (pixel noise is not).
    coarse = np.random.default_rng(3).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((120, 90), Image.BILINEAR))
    sizes = [(54, 72), (39, 51), (27, 36)]
    levels = list(pyramid_levels(as_pil(image), sizes))
    assert [lv.shape for lv in levels] == [(54, 72, 3), (39, 51, 3), (27, 36, 3)]
    assert all(lv.dtype == np.uint8 for lv in levels)
    for level in levels:  # an area resize keeps the mean, and stays close to exact pooling
        np.testing.assert_allclose(level.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=2.0)
    for level, size in zip(levels, sizes, strict=True):
        exact = _adaptive_avg_pool(image, size)
        # measured 0.4 / 3.0 / 3.8 mean, 1.2 / 13 / 24 max: each chained step blurs a little more
        assert np.abs(level - exact).mean() < 6 and np.abs(level - exact).max() < 40


def test_a_level_at_most_one_pixel_larger_is_the_picture_itself() -> None:
    """facenet's ``int(h * scale + 1)`` asks a level searched at scale 1 for one pixel more
    than the picture: it is the picture, not a resampled copy; a real enlargement resamples."""
    image = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    sizes = [(31, 41), (30, 41), (31, 40)]
    assert [level_size(30, 40, 1.0)] == sizes[:1]
    for level in pyramid_levels(as_pil(image), sizes):
        np.testing.assert_array_equal(level, image)
    enlarged = next(pyramid_levels(as_pil(image), [(32, 42)]))
    assert enlarged.shape == (32, 42, 3)


def test_crop_windows_clip_at_image_borders() -> None:
    height, width = 80, 100
    boxes = np.array(
        [
            [-10.7, -5.2, 50.3, 40.9],  # over the top-left corner
            [90.5, 70.2, 130.0, 120.0],  # over the bottom-right corner
            [20.0, 30.0, 40.0, 50.0],  # inside
            [150.0, 10.0, 200.0, 50.0],  # wholly right of the image
        ],
        np.float32,
    )
    windows, valid = crop_windows(boxes, height, width)
    # facenet: trunc, clip x1/y1 to >= 1 and x2/y2 to the size, crop [y1 - 1, y2) x [x1 - 1, x2).
    assert windows[:3].tolist() == [[0, 40, 0, 50], [69, 80, 89, 100], [29, 50, 19, 40]]
    assert valid.tolist() == [True, True, True, False]

    image = np.random.default_rng(2).integers(0, 256, (height, width, 3), dtype=np.uint8)
    crops = crop_patches(image, windows[:3], 24)
    assert crops.shape == (3, 24, 24, 3) and crops.dtype == np.float32
    for crop, (r0, r1, c0, c1) in zip(crops, windows[:3], strict=True):
        np.testing.assert_allclose(crop, _adaptive_avg_pool(image[r0:r1, c0:c1], (24, 24)), atol=1e-4)


@pytest.mark.parametrize("size", [24, 48])
def test_tall_windows_are_cropped_by_row_sums_to_the_same_pooling(size: int) -> None:
    import service.vision.mtcnn as mtcnn_module

    image = np.random.default_rng(6).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    tall = mtcnn_module._CELL_SUM_ROWS * size
    # half-open row0, row1, col0, col1: just under and over the switch, a tall thin one, a big one
    windows = np.array(
        [[0, tall, 0, tall], [3, tall + 4, 10, tall + 1], [20, 690, 100, 131], [0, 700, 0, 500]], np.int64
    )
    crops = crop_patches(image, windows, size)
    for crop, (r0, r1, c0, c1) in zip(crops, windows, strict=True):
        np.testing.assert_allclose(crop, _adaptive_avg_pool(image[r0:r1, c0:c1], (size, size)), atol=1e-4)


# --- the shipped detector -----------------------------------------------------------------


def test_astronaut_matches_facenet_reference(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    faces = detector.detect(astronaut_rgb)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, FaceDetection)
    np.testing.assert_allclose(face.box, REF_BOX, atol=TOL_PX)
    assert face.score == pytest.approx(REF_SCORE, abs=1e-4)
    assert face.landmarks.shape == (5, 2)
    np.testing.assert_allclose(face.landmarks, REF_LANDMARKS, atol=TOL_PX)


def test_no_face_on_blank_or_noise(detector: MTCNN) -> None:
    assert detector.detect(np.zeros((200, 300, 3), np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []  # smaller than one P-Net cell


def test_flipped_and_rotated_astronaut_still_found(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    width = astronaut_rgb.shape[1]
    (flipped,) = detector.detect(astronaut_rgb[:, ::-1].copy())
    # Mirror the reference box; the detector is not exactly mirror-symmetric, hence a few px.
    mirrored = np.array([width - REF_BOX[2], REF_BOX[1], width - REF_BOX[0], REF_BOX[3]])
    np.testing.assert_allclose(flipped.box, mirrored, atol=8)
    # "Left eye" is the one on the image's left: in the mirror it is the person's other eye.
    assert flipped.landmarks[0, 0] < flipped.landmarks[1, 0]
    np.testing.assert_allclose(flipped.landmarks[0, 0], width - REF_LANDMARKS[1, 0], atol=4)

    rotated = np.asarray(Image.fromarray(astronaut_rgb).rotate(15, resample=Image.BILINEAR))
    faces = detector.detect(rotated)
    assert len(faces) == 1 and faces[0].score > 0.99


def test_several_faces_sorted_by_score(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    half = np.asarray(Image.fromarray(astronaut_rgb).resize((256, 256), Image.BILINEAR))
    pair = np.concatenate([half, half[:, ::-1]], axis=1)  # (256, 512, 3): two faces
    faces = detector.detect(pair)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    assert {f.box[0] < 256 for f in faces} == {True, False}  # one in each half


def test_min_face_size_is_honoured(detector: MTCNN, small_face_canvas: np.ndarray) -> None:
    # The face is ~22 px wide: searched for at min_face_size 20, out of range at 60.
    assert len(detector.detect(small_face_canvas, min_face_size=20)) == 1
    assert detector.detect(small_face_canvas, min_face_size=60) == []
    strict = MTCNN(detector.pnet, detector.rnet, detector.onet, min_face_size=60)
    assert strict.detect(small_face_canvas) == []
    assert len(strict.detect(small_face_canvas, min_face_size=20)) == 1


def test_threshold_overrides_the_final_stage(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    (face,) = detector.detect(astronaut_rgb)
    assert detector.detect(astronaut_rgb, threshold=float(np.nextafter(np.float32(face.score), 1))) == []


def test_rejects_non_rgb_arrays(detector: MTCNN) -> None:
    from service.errors import InvalidImage

    with pytest.raises(InvalidImage):
        detector.detect(np.zeros((64, 64), np.uint8))


# --- the card -----------------------------------------------------------------------------


def test_card_describes_the_shipped_graphs() -> None:
    card = load_card(MODEL_DIR)
    assert card.kind == "detector"
    assert set(card.graphs) == {"pnet", "rnet", "onet"}
    assert card.license.startswith("MIT")
    assert set(verify_files(card, MODEL_DIR)) == {"pnet", "rnet", "onet"}
    assert [o.name for o in card.graphs["onet"].outputs] == ["reg", "landmarks", "prob"]
    # The card records the settings the cascade was checked against facenet with: the
    # detector's own defaults, which the service settings and the dataset aligner take too.
    assert card.extra["defaults"] == {
        "min_face_size": DEFAULT_MIN_FACE_SIZE,
        "thresholds": list(DEFAULT_THRESHOLDS),
        "factor": DEFAULT_FACTOR,
    }


def test_tampered_graph_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "mtcnn"
    shutil.copytree(MODEL_DIR, copy)
    data = bytearray((copy / "rnet.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "rnet.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        MTCNN.from_dir(copy)


def test_missing_graph_file_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "mtcnn"
    shutil.copytree(MODEL_DIR, copy)
    (copy / "onet.onnx").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        MTCNN.from_dir(copy)


# --- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize(("graph", "size"), [("rnet", 24), ("onet", 48)])
def test_a_crops_outputs_do_not_depend_on_its_call(detector: MTCNN, crowd: np.ndarray, graph: str, size: int) -> None:
    """The threads split the candidates into calls of other sizes than one thread does; each
    crop must come out the same whatever call it is in, to the last bit."""
    boxes = detector._stage_pnet(as_pil(crowd), *crowd.shape[:2], DEFAULT_MIN_FACE_SIZE, INLINE)
    windows, valid = crop_windows(boxes, *crowd.shape[:2])
    crops = normalise_pixels(crop_patches(crowd, windows[valid][:150], size))
    session = getattr(detector, graph)
    name = session.get_inputs()[0].name
    whole = session.run(None, {name: crops})
    edges = [0, 1, 8, 71, 150]
    parts = [session.run(None, {name: crops[a:b]}) for a, b in zip(edges, edges[1:])]
    assert len(crops) == 150
    for k, out in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([part[k] for part in parts]), out)


def test_pyramid_levels_do_not_depend_on_the_threads(astronaut_rgb: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.scheduling import SharedThreads

    sizes = [level_size(512, 512, s) for s in pyramid_scales(512, 512, DEFAULT_MIN_FACE_SIZE, DEFAULT_FACTOR)]
    alone = list(pyramid_levels(as_pil(astronaut_rgb), sizes))
    with ThreadPoolExecutor(3) as pool:
        together = list(pyramid_levels(as_pil(astronaut_rgb), sizes, 3, SharedThreads(pool, 3)))
    assert len(together) == len(alone) == len(sizes)
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sessions_run_single_threaded_under_detector_threads() -> None:
    assert session_threads(threads=2, intra_op_threads=0) == 1
    assert session_threads(threads=1, intra_op_threads=0) == 0
    assert session_threads(threads=1, intra_op_threads=3) == 3
    single = MTCNN.from_dir(MODEL_DIR, intra_op_threads=session_threads(threads=2, intra_op_threads=0))
    assert single.pnet.get_session_options().intra_op_num_threads == 1


def test_tuning_is_checked_and_given_at_construction(detector: MTCNN) -> None:
    assert detector.tuning == CascadeTuning()
    for field in ("pnet_band_pixels", "pyramid_direct", "crop_batch"):
        with pytest.raises(ValueError, match=field):
            CascadeTuning(**{field: 0})


def test_pnet_candidates_do_not_depend_on_the_bands(detector: MTCNN, crowd: np.ndarray) -> None:
    def candidates(max_pixels: int) -> np.ndarray:
        banded = MTCNN(detector.pnet, detector.rnet, detector.onet, tuning=CascadeTuning(pnet_band_pixels=max_pixels))
        return banded._stage_pnet(as_pil(crowd), *crowd.shape[:2], DEFAULT_MIN_FACE_SIZE, INLINE)

    whole = candidates(10**9)
    assert len(whole) > 100
    np.testing.assert_array_equal(candidates(20_000), whole)
