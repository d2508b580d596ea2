import numpy as np
import pytest

from service.vision.align import (
    TEMPLATE_112,
    align_face,
    estimate_similarity,
    normalise,
    template_landmarks,
    to_uint8_images,
    warp_affine,
)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, [[tx], [ty]]])


def test_template_scales_linearly():
    assert np.allclose(template_landmarks(112), TEMPLATE_112)
    assert np.allclose(template_landmarks(224), TEMPLATE_112 * 2)
    with pytest.raises(ValueError):
        template_landmarks(0)


@pytest.mark.parametrize(
    "angle,scale,tx,ty", [(0, 1, 0, 0), (17, 0.6, 30, -12), (-80, 2.5, -100, 40), (179, 1.3, 5, 5)]
)
def test_estimate_similarity_recovers_exact_transform(angle, scale, tx, ty):
    src = np.random.default_rng(0).uniform(0, 200, size=(5, 2))
    m = similarity(angle, scale, tx, ty)
    assert np.allclose(estimate_similarity(src, apply(m, src)), m, atol=1e-9)


def test_estimate_similarity_never_mirrors():
    src = TEMPLATE_112.copy()
    mirrored = src * np.array([-1.0, 1.0])
    m = estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0  # a rotation+scale, not a reflection


def test_estimate_similarity_rejects_bad_points():
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), TEMPLATE_112)
    with pytest.raises(ValueError):
        estimate_similarity(np.full((5, 2), np.nan), TEMPLATE_112)
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 3)), np.zeros((5, 3)))


def test_warp_identity_and_translation_are_exact():
    img = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.array_equal(warp_affine(img, ident, (50, 40)), img)
    shift = np.array([[1.0, 0, 3], [0, 1.0, 2]])  # content moves right 3, down 2
    out = warp_affine(img, shift, (50, 40))
    assert np.array_equal(out[2:, 3:], img[:-2, :-3])
    assert (out[:2] == 0).all() and (out[:, :3] == 0).all()  # outside the source: border value


def test_warp_reads_views_and_whole_arrays_alike():
    """A contiguous picture is sampled through its flattened pixels, a view (a crop, a channel)
    through 2-D indexing: both give the same pixels, borders included."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    tilt = np.array([[0.9, -0.3, 30.0], [0.3, 0.9, 20.0]])  # rotated, scaled; the top left corner outside
    for view in (img[50:250:2, 30:380], img[..., 1], img[::-1]):
        assert not view.flags.c_contiguous
        copy = np.ascontiguousarray(view)
        for border in (0, 200):
            np.testing.assert_array_equal(
                warp_affine(view, tilt, (64, 48), border), warp_affine(copy, tilt, (64, 48), border)
            )
    out = warp_affine(img, tilt, (64, 48), border_value=200)
    assert out.shape == (48, 64, 3) and (out == 200).all(axis=2).any()  # some pixels fall outside


def test_warp_bilinear_halfway():
    img = np.array([[0, 100], [50, 150]], dtype=np.float32)
    half = np.array([[1.0, 0, -0.5], [0, 1.0, -0.5]])
    out = warp_affine(img, half, (1, 1))
    assert out[0, 0] == pytest.approx(75.0)


def test_align_face_puts_landmarks_on_template(astronaut_rgb):
    # Landmarks of the fixture's face (reference detector output).
    pts = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    for size in (64, 112, 224):
        aligned, m = align_face(astronaut_rgb, pts, size)
        assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
        mapped = apply(m, pts)
        # 5 points, 4 degrees of freedom: not exact, but a real face sits within a few pixels.
        assert np.abs(mapped - template_landmarks(size)).max() < 0.06 * size


def test_align_is_consistent_across_sizes(astronaut_rgb):
    pts = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    small, _ = align_face(astronaut_rgb, pts, 112)
    big, _ = align_face(astronaut_rgb, pts, 224)
    down = big.reshape(112, 2, 112, 2, 3).mean(axis=(1, 3))
    assert np.abs(down - small.astype(np.float64)).mean() < 6.0


def test_normalise_and_back():
    faces = np.random.default_rng(2).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = normalise(faces, mean, std)
    assert x.shape == (2, 3, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[1, 2, 3, 4], (faces[1, 3, 4, 2] / 255.0 - mean[2]) / std[2], atol=1e-6)
    back = to_uint8_images(
        x * np.array(std, np.float32).reshape(1, 3, 1, 1) + np.array(mean, np.float32).reshape(1, 3, 1, 1)
    )
    assert np.array_equal(back, faces)
    with pytest.raises(ValueError):
        normalise(np.zeros((2, 8, 8)), mean, std)
