"""Big photos: decoded at the size detection needs (JPEG DCT scaling), searched on a picture
bounded by ``detect_max_side``, boxes mapped back to full resolution, crops cut from full
resolution where that changes them; the same faces as a search of the full photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.pipeline import DetectOptions, FacePipeline, StageTimer
from service.vision.faces import find_faces, search_min_face
from service.vision.imaging import Picture, decode_image, decode_picture
from service.vision.mtcnn import MTCNN
from tests.images import encode, with_exif_orientation

REPO = Path(__file__).resolve().parent.parent
# A face found on the reduced picture and on the full photo: boxes overlap by IoU >= 0.9 and
# landmarks agree to 3 % of the face's width (measured on the 2560 px photo: IoU 0.96, 1.6 %).
# A face that the reduction leaves at 15 px gets its box and landmarks refined at full
# resolution (measured IoU 0.95, 1.3 %; 0.82 and 8.1 % without the refinement).
MIN_IOU = 0.9
LANDMARK_TOL = 0.03


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN.from_dir(REPO / "models" / "mtcnn", intra_op_threads=1)


@pytest.fixture(scope="module")
def big_astronaut(astronaut_rgb: np.ndarray) -> np.ndarray:
    """(2560, 2560, 3): the fixture photo upscaled 5x (face ~450 px)."""
    return np.asarray(Image.fromarray(astronaut_rgb).resize((2560, 2560), Image.Resampling.BICUBIC))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_same_faces(got, want, min_iou: float = MIN_IOU, landmark_tol: float = LANDMARK_TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert iou(g.box, w.box) >= min_iou
        width = w.box[2] - w.box[0]
        assert np.abs(np.asarray(g.landmarks) - np.asarray(w.landmarks)).max() <= landmark_tol * width


def test_jpeg_is_decoded_reduced_and_full_on_demand(big_astronaut: np.ndarray) -> None:
    data = encode(big_astronaut[:, :1800], "JPEG", quality=92)  # 1800 x 2560, portrait
    picture = decode_picture(data, max_pixels=40_000_000, max_side=1280)
    assert (picture.width, picture.height) == (1800, 2560)
    assert picture.pixels.shape == (1280, 900, 3) and picture.reduced
    assert picture.scale == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(picture.full(), decode_image(data, max_pixels=40_000_000))
    # A bound above the photo's side changes nothing.
    whole = decode_picture(data, max_pixels=40_000_000, max_side=4096)
    assert not whole.reduced and whole.full() is whole.pixels


def test_draft_decoding_honours_exif_orientation(big_astronaut: np.ndarray) -> None:
    upright = big_astronaut[:2000, :1400]
    data = with_exif_orientation(upright, 6)  # stored landscape, shown portrait
    picture = decode_picture(data, max_pixels=40_000_000, max_side=500)
    assert (picture.width, picture.height) == (1400, 2000)
    assert picture.pixels.shape == (500, 350, 3)
    reduced_full = np.asarray(
        Image.fromarray(decode_image(data, max_pixels=40_000_000)).resize((350, 500), Image.Resampling.BOX)
    )
    assert np.abs(picture.pixels.astype(int) - reduced_full).mean() < 3  # the same upright picture


def test_an_upload_that_cannot_be_drafted_is_reduced_before_it_becomes_an_array(big_astronaut: np.ndarray) -> None:
    photo = big_astronaut[:1500, :1920]  # 1920 x 1500: JPEG's scales reach 960 px, under the bound
    for data in (encode(photo, "PNG"), encode(photo, "JPEG", quality=92)):
        full = decode_image(data, max_pixels=40_000_000)
        picture = decode_picture(data, max_pixels=40_000_000, max_side=1280)
        assert (picture.width, picture.height) == (1920, 1500) and picture.pixels.shape == (1000, 1280, 3)
        np.testing.assert_array_equal(
            picture.pixels, np.asarray(Image.fromarray(full).resize((1280, 1000), Image.Resampling.BOX))
        )
        np.testing.assert_array_equal(picture.full(), full)


def test_png_is_reduced_after_decoding(big_astronaut: np.ndarray) -> None:
    picture = Picture.from_array(big_astronaut, max_side=1000)
    assert picture.pixels.shape == (1000, 1000, 3) and picture.full() is big_astronaut
    np.testing.assert_allclose(
        picture.to_full(np.array([[0.0, 0.0], [999.0, 999.0]])), [[0.78, 0.78], [2558.22, 2558.22]]
    )


def test_search_min_face_rule() -> None:
    assert search_min_face(20, 1.0) == 20  # not reduced: the request's own size
    assert search_min_face(20, 0.8) == 16  # reduced a little: the same faces, in reduced pixels
    assert search_min_face(20, 0.25) == 12  # reduced a lot: never below P-Net's 12 px cell
    assert search_min_face(8, 0.25) == 8  # a request below 12 px keeps its own floor


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_same_faces_with_and_without_the_bound(detector: MTCNN, big_astronaut: np.ndarray, fmt: str) -> None:
    data = encode(big_astronaut, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    # threshold 0.9: searched at full size, the upscaled suit also gives one box at 0.86.
    full = find_faces(
        detector, decode_image(data, max_pixels=40_000_000), size=48, min_face_size=20, threshold=0.9, max_faces=20
    )
    bounded = find_faces(
        detector,
        decode_picture(data, max_pixels=40_000_000, max_side=1280),
        size=48,
        min_face_size=20,
        threshold=0.9,
        max_faces=20,
    )
    assert len(full) == 1
    assert_same_faces(bounded, full)
    # The crops show the same face (the big face is cut from the reduced picture): measured 8
    # grey levels apart on average, from the small landmark differences; a crop cut at
    # landmarks mapped wrongly shows another part of the photo.
    assert np.abs(bounded[0].aligned.astype(int) - full[0].aligned).mean() < 15


def test_small_faces_are_cut_from_full_resolution(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    """A 2400 px canvas with a ~60 px face: reduced to 600 px the face is 15 px, smaller than
    the 48 px crop, so the crop is cut from the full-resolution pixels."""
    face = np.asarray(Image.fromarray(astronaut_rgb).resize((340, 340), Image.Resampling.BOX))
    canvas = np.full((2400, 2400, 3), 90, np.uint8)
    canvas[1000:1340, 1000:1340] = face
    full_faces = find_faces(detector, canvas, size=48, min_face_size=40, threshold=None, max_faces=5)
    calls: list[int] = []
    picture = Picture.from_array(canvas, max_side=600)
    original_full = picture.full

    def counting_full() -> np.ndarray:
        calls.append(1)
        return original_full()

    picture.full = counting_full
    bounded = find_faces(detector, picture, size=48, min_face_size=40, threshold=None, max_faces=5)
    assert len(full_faces) == 1 and calls
    assert_same_faces(bounded, full_faces)
    assert np.abs(bounded[0].aligned.astype(int) - full_faces[0].aligned).mean() < 15  # measured 6


def test_pipeline_bounds_the_detector_input(detector: MTCNN, big_astronaut: np.ndarray) -> None:
    """Whatever the photo and min_face_size, the detector sees at most detect_max_side pixels a
    side and searches down to at least min(min_face_size, 12) of them."""
    seen: list[tuple[tuple[int, ...], int]] = []

    class Recording:
        def detect(self, image, *, min_face_size=None, threshold=None):
            seen.append((image.shape, min_face_size))
            return detector.detect(image, min_face_size=min_face_size, threshold=threshold)

    class NoModel:
        input_hw = (48, 48)

        def request(self, **_):
            from contextlib import nullcontext

            return nullcontext()

    pipeline = FacePipeline(Recording(), NoModel(), detect_max_side=800)
    data = encode(big_astronaut, "JPEG", quality=90)
    results = pipeline.run(
        [data],
        DetectOptions(max_faces=5, min_face_size=8, threshold=0.7),
        StageTimer(),
        recognise=False,
        poker_face=False,
    )
    assert seen == [((800, 800, 3), 8)]
    (result,) = results
    assert (result.width, result.height) == (2560, 2560) and len(result.faces) == 1
    x1, y1, x2, y2 = result.faces[0].box
    assert 350 < x2 - x1 < 500  # the box is in full-resolution pixels (the face is ~430 px wide)


def test_a_truncated_jpeg_is_an_error_on_the_reduced_path_too(big_astronaut: np.ndarray) -> None:
    from service.errors import InvalidImage

    data = encode(big_astronaut, "JPEG", quality=90)
    with pytest.raises(InvalidImage):
        decode_picture(data[: len(data) // 2], max_pixels=40_000_000, max_side=640)  # drafted: decoded at 1/4


def test_full_resolution_is_decoded_once(big_astronaut: np.ndarray) -> None:
    calls: list[int] = []

    def decode() -> np.ndarray:
        calls.append(1)
        return big_astronaut

    picture = Picture(pixels=big_astronaut[::4, ::4], width=2560, height=2560, _full=decode)
    assert picture.full() is big_astronaut and picture.full() is big_astronaut
    assert calls == [1]
    with pytest.raises(RuntimeError, match="no way back"):
        Picture(pixels=big_astronaut[::4, ::4], width=2560, height=2560).full()
