"""Procedural face renderer: determinism, true poker faces, AU effects, splits, geometry, scenes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.vision.align import align_face, template_landmarks
from training.render.dataset import (
    IDENTITY_RANGES,
    SPLITS,
    RenderedFaceDataset,
    identity_split,
    render_sample,
    sample_parameters,
)
from training.render.face import (
    AU_CODES,
    EMOTIONS,
    Scene,
    face_geometry,
    identity_from_id,
    prototype_aus,
    render_face,
    render_pair,
    render_scene,
)

ZERO = np.zeros((2, len(AU_CODES)))


def _label(name: str) -> int:
    return EMOTIONS.index(name)


def test_same_seed_same_bytes_and_different_seeds_differ() -> None:
    a, b = render_sample(123, 64), render_sample(123, 64)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.poker_face.tobytes() == b.poker_face.tobytes()
    assert (a.label, a.identity) == (b.label, b.identity)
    c = render_sample(124, 64)
    assert a.image.tobytes() != c.image.tobytes()


def test_neutral_has_no_action_units_and_is_its_own_poker_face() -> None:
    s = render_sample(7, 112, label=_label("neutral"))
    assert not s.aus.any()
    assert np.array_equal(s.image, s.poker_face)


@pytest.mark.parametrize("label", range(1, len(EMOTIONS)))
def test_poker_face_is_the_same_render_with_aus_zeroed(label: int) -> None:
    seed = (3, label)
    s = render_sample(seed, 64, label=label)
    _, idn, aus, scene, identity_id = sample_parameters(seed, IDENTITY_RANGES["train"], label)
    assert identity_id == s.identity and np.array_equal(aus, s.aus) and aus.any()
    assert np.array_equal(render_face(idn, ZERO, scene, 64).image, s.poker_face)
    assert np.array_equal(render_face(idn, aus, scene, 64).image, s.image)
    assert not np.array_equal(s.image, s.poker_face)


def _geo(emotion: str, side: int = 1) -> dict[str, np.ndarray]:
    return face_geometry(identity_from_id(11), prototype_aus(emotion, 1.0, side))


def test_prototypes_move_the_intended_features() -> None:
    rest = face_geometry(identity_from_id(11), ZERO)
    y = 1  # image y grows downwards: "up" means a smaller y
    happy, sad = _geo("happiness"), _geo("sadness")
    assert (happy["mouth_corners"][:, y] < rest["mouth_corners"][:, y] - 2.0).all()
    assert (sad["mouth_corners"][:, y] > rest["mouth_corners"][:, y] + 2.0).all()
    surprise, anger, fear = _geo("surprise"), _geo("anger"), _geo("fear")
    for key in ("brow_inner", "brow_mid", "brow_outer"):
        assert (surprise[key][:, y] < rest[key][:, y] - 2.0).all(), key
    for key in ("brow_inner", "brow_mid"):
        assert (anger[key][:, y] > rest[key][:, y] + 2.0).all(), key
    gap_rest = rest["open_bottom"] - rest["open_top"]
    for g in (surprise, fear):
        assert (g["open_bottom"] - g["open_top"] > gap_rest + 4.0).all()
        assert (g["chin"] > rest["chin"]).all()
        assert (g["lid_upper"] > rest["lid_upper"] + 1.5).all()  # wide eyes
    for side in (0, 1):
        contempt = _geo("contempt", side)
        moved = np.abs(contempt["mouth_corners"] - rest["mouth_corners"]).sum(axis=1)
        assert moved[side] > 2.0 and moved[1 - side] == 0.0
    disgust = _geo("disgust")
    assert disgust["nostril_lift"][0] > 1.0 and disgust["lip_top"][0] < rest["lip_top"][0] - 2.0


def _region_change(emotion: str, rows: slice, cols: slice, side: int = 1) -> float:
    """Mean absolute pixel change between the expressive face and its poker face in a region (112 px)."""
    idn = identity_from_id(11)
    face, poker = render_pair(idn, prototype_aus(emotion, 1.0, side), Scene(), 112)
    return float(np.abs(face.image[rows, cols].astype(np.int16) - poker.image[rows, cols]).mean())


def test_rendered_images_change_where_the_aus_act() -> None:
    nose = (slice(52, 70), slice(46, 66))
    mouth = (slice(82, 104), slice(34, 78))
    brows = (slice(28, 46), slice(22, 90))
    assert _region_change("disgust", *nose) > 4.0
    assert _region_change("happiness", *nose) < _region_change("disgust", *nose)
    for emotion in ("happiness", "sadness", "surprise", "fear", "contempt"):
        assert _region_change(emotion, *mouth) > 3.0, emotion
    for emotion in ("surprise", "anger", "sadness", "fear"):
        assert _region_change(emotion, *brows) > 2.0, emotion
    # contempt: the active half of the mouth changes far more (the lips tilt, so the other half a little)
    for side, (active, other) in ((1, (slice(56, 80), slice(30, 56))), (0, (slice(30, 56), slice(56, 80)))):
        rows = slice(80, 100)
        assert _region_change("contempt", rows, active, side) > 2 * _region_change("contempt", rows, other, side)


@pytest.mark.parametrize("size", [64, 112, 224])
def test_zero_pose_landmarks_sit_on_the_template(size: int) -> None:
    for identity_id in (0, 1, 2):
        r = render_face(identity_from_id(identity_id), ZERO, Scene(), size)
        assert np.abs(r.landmarks - template_landmarks(size)).max() < 1.0


def test_scene_contains_the_face_at_its_box() -> None:
    idn = identity_from_id(4)
    aus = prototype_aus("happiness", 0.8)
    scene = Scene(rotation_deg=6.0, yaw=0.2)
    big = render_scene(idn, aus, scene, canvas=(320, 240), face_px=100.0, centre=(200.0, 110.0))
    assert big.image.shape == (240, 320, 3) and big.image.dtype == np.uint8
    x0, y0, x1, y1 = big.box
    assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
    assert ((big.landmarks >= [x0, y0]) & (big.landmarks <= [x1, y1])).all()
    assert 120 < 0.5 * (x0 + x1) < 280  # the face is right of centre, where it was placed
    # aligning the scene with its own landmarks gives back the face as rendered directly
    aligned, _ = align_face(big.image, big.landmarks, 112)
    direct = render_face(idn, aus, scene, 112)
    direct_aligned, _ = align_face(direct.image, direct.landmarks, 112)
    inner = (slice(36, 100), slice(28, 84))
    err = np.abs(aligned[inner].astype(np.int16) - direct_aligned[inner]).mean()
    assert err < 6.0
    # and the box is not background: the background is flat grey in the default scene
    box_px = big.image[int(y0) : int(y1), int(x0) : int(x1)].astype(np.int16)
    assert np.abs(box_px - big.image[5, 5]).mean() > 20


def test_identity_splits_are_disjoint() -> None:
    ranges = sorted(IDENTITY_RANGES.values())
    for (a, n), (b, _) in zip(ranges, ranges[1:]):
        assert a + n <= b
    seen = {}
    for split in SPLITS:
        ds = RenderedFaceDataset(split, 32, 24, seed=5)
        ids = {int(ds[i]["identity"]) for i in range(len(ds))}
        assert all(identity_split(i) == split for i in ids)
        seen[split] = ids
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


@pytest.mark.parametrize("size", [64, 112, 224])
def test_dataset_items(size: int) -> None:
    ds = RenderedFaceDataset("val", size, 16, seed=1)
    assert ds.labels == list(EMOTIONS) and ds.labels[0] == "neutral"
    labels = []
    for i in range(0, 16, 1 if size == 64 else 5):
        item = ds[i]
        for key in ("image", "poker_face"):
            x = item[key]
            assert x.dtype == torch.float32 and x.shape == (3, size, size)
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert item["label"].dtype == torch.int64 and item["identity"].dtype == torch.int64
        labels.append(int(item["label"]))
    if size == 64:
        assert np.bincount(labels, minlength=8).tolist() == [2] * 8  # balanced
    again = RenderedFaceDataset("val", size, 16, seed=1)[0]
    assert torch.equal(again["image"], ds[0]["image"])  # pure function of (seed, split, i)


def test_augmentation_treats_face_and_poker_face_alike() -> None:
    plain = RenderedFaceDataset("train", 48, 8, seed=2)
    aug = RenderedFaceDataset("train", 48, 8, seed=2, augment=True)
    flips = 0
    for i in range(8):
        p, a = plain[i], aug[i]
        if int(p["label"]) == 0:  # neutral: identical before and after, so after augmentation too
            assert torch.equal(a["image"], a["poker_face"])
        flipped = torch.flip(p["image"], dims=[2])
        flips += float((a["image"] - flipped).abs().mean()) < float((a["image"] - p["image"]).abs().mean())
    assert 0 < flips < 8


def test_set_epoch_redraws_augmentation_and_is_deterministic_per_epoch() -> None:
    def images(ds: RenderedFaceDataset, epoch: int) -> list[torch.Tensor]:
        ds.set_epoch(epoch)
        return [ds[i]["image"] for i in range(len(ds))]

    aug = RenderedFaceDataset("train", 32, 8, seed=4, augment=True)
    epoch0, epoch1, epoch0_again = images(aug, 0), images(aug, 1), images(aug, 0)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, epoch0_again))
    # gain and bias are continuous draws, so every item changes with the epoch
    assert not any(torch.equal(a, b) for a, b in zip(epoch0, epoch1))
    fresh = RenderedFaceDataset("train", 32, 8, seed=4, augment=True)
    assert all(torch.equal(a, b) for a, b in zip(images(fresh, 1), epoch1))  # a function of the epoch, not of history
    plain = RenderedFaceDataset("train", 32, 8, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(images(plain, 0), images(plain, 3)))  # no augmentation, no change


def test_grid_command_writes_rows_of_emotions_and_pairs_of_columns(tmp_path: Path) -> None:
    from PIL import Image

    from training.render.__main__ import main

    out = tmp_path / "grid.png"
    main(["grid", "--out", str(out), "--size", "24", "--cols", "2", "--seed", "1"])
    pad, header, size = 2, 16, 24  # image_grid_png's gap and title row
    with Image.open(out) as img:
        assert img.size == (4 * (size + pad) + pad, header + len(EMOTIONS) * (size + pad) + pad)
        grid = np.asarray(img.convert("RGB"))
    s = render_sample((1, 3, 1), size, label=3)  # row 3 (sadness), pair 1: columns 2 and 3
    y, x = header + pad + 3 * (size + pad), pad + 2 * (size + pad)
    assert np.array_equal(grid[y : y + size, x : x + size], s.image)
    assert np.array_equal(grid[y : y + size, x + size + pad : x + 2 * size + pad], s.poker_face)


# --------------------------------------------------------------------------- golden renders
# A rendered face is a pure function of its seed, down to the byte: these digests were taken
# from the renderer before it was split into modules, and any change to a drawing, a constant
# or the order of random draws shows up here. Float ufuncs (exp, sin, hypot) may round
# differently under another numpy build or CPU; regenerate the file with ``golden_digests()``
# only after checking that such a change is intended.

GOLDEN_PATH = Path(__file__).parent / "fixtures" / "render_golden.json"
GOLDEN_SIZES = (48, 64, 112)
GOLDEN_EPOCHS = (0, 1)


def _digest(array: np.ndarray | torch.Tensor) -> str:
    """sha256 over dtype, shape and the C-ordered bytes of one array."""
    a = np.ascontiguousarray(array.numpy() if isinstance(array, torch.Tensor) else array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def golden_digests() -> dict[str, str]:
    """Digests of a fixed set of renders: every emotion at every golden size (face and poker
    face), unlabelled seeds, single renders, a face placed in a scene, and augmented dataset
    items over two epochs."""
    out: dict[str, str] = {}
    for size in GOLDEN_SIZES:
        for label, emotion in enumerate(EMOTIONS):
            s = render_sample((11, size, label), size, label=label)
            key = f"sample/{emotion}/{size}"
            out[f"{key}/image"], out[f"{key}/poker_face"] = _digest(s.image), _digest(s.poker_face)
            out[f"{key}/landmarks"], out[f"{key}/aus"] = _digest(s.landmarks), _digest(s.aus)
    for seed in (0, 1, 2, 3, 4, 5):
        s = render_sample(seed, 64)
        out[f"seed/{seed}/image"], out[f"seed/{seed}/poker_face"] = _digest(s.image), _digest(s.poker_face)
    for identity_id in range(8):
        r = render_face(identity_from_id(identity_id), prototype_aus("contempt", 0.9, identity_id % 2), Scene(), 64)
        out[f"face/{identity_id}/image"], out[f"face/{identity_id}/landmarks"] = _digest(r.image), _digest(r.landmarks)
    r = render_scene(
        identity_from_id(4),
        prototype_aus("fear", 0.8),
        Scene(rotation_deg=5.0, yaw=-0.3, seed=9, noise_sigma=0.02, background=2),
        canvas=(160, 120),
        face_px=80.0,
        centre=(90.0, 64.0),
    )
    out["scene/image"], out["scene/landmarks"], out["scene/box"] = (
        _digest(r.image),
        _digest(r.landmarks),
        _digest(r.box),
    )
    ds = RenderedFaceDataset("train", 48, 8, seed=3, augment=True)
    for epoch in GOLDEN_EPOCHS:
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            for k in ("image", "poker_face"):
                out[f"dataset/epoch{epoch}/{i}/{k}"] = _digest(item[k])
    return out


def test_renders_match_the_golden_digests() -> None:
    expected = json.loads(GOLDEN_PATH.read_text())
    actual = golden_digests()
    assert actual.keys() == expected.keys()
    changed = sorted(k for k in expected if actual[k] != expected[k])
    assert not changed, f"{len(changed)} of {len(expected)} renders changed, e.g. {changed[:5]}"
