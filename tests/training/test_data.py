"""training.data: each dataset in its official layout (tiny fakes on disk), augmentations,
balanced sampling and the align-dataset command on a real photo."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from service.vision.align import TEMPLATE_112
from training.data import (
    AFFECTNET_LABELS,
    FERPLUS_LABELS,
    RAFDB_LABELS,
    FaceTransform,
    balanced_sampler,
    build_dataset,
    ferplus_majority,
    ferplus_soft_target,
    five_points_from_68,
    sample_weights,
)
from training.data.datasets import crop_box
from training.data.ferplus import FERPLUS_VOTE_COLUMNS
from training.data.transforms import hflip, random_affine, to_tensor


def _noise(h: int, w: int, seed: int, grey: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _check_item(item: dict, size: int) -> None:
    assert item["image"].shape == (3, size, size)
    assert item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0


# --- RAF-DB ---------------------------------------------------------------------------------


@pytest.fixture
def rafdb_root(tmp_path: Path) -> Path:
    base = tmp_path / "basic"
    rows = [("train_00001.jpg", 1), ("train_00002.jpg", 7), ("train_00003.jpg", 4), ("test_0001.jpg", 5)]
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {c}\n" for n, c in rows))
    for i, (name, _) in enumerate(rows):
        _save(base / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), _noise(100, 100, i))
    return tmp_path


def test_rafdb_splits_labels_and_one_based_mapping(rafdb_root: Path) -> None:
    train = build_dataset("rafdb", rafdb_root, "train", 32, augment=False)
    test = build_dataset("rafdb", rafdb_root / "basic", "test", 32, augment=False)
    assert train.labels == RAFDB_LABELS == ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    assert len(train) == 3 and len(test) == 1
    assert train.targets == [0, 6, 3]  # 1 surprise, 7 neutral, 4 happiness
    assert test.targets == [4]
    _check_item(train[1], 32)  # the 100x100 crop resized
    assert int(train[1]["label"]) == 6
    assert len(build_dataset("rafdb", rafdb_root, "val", 32, augment=False)) == 1  # test doubles as val


def test_rafdb_missing_image_is_a_clear_error(rafdb_root: Path) -> None:
    (rafdb_root / "basic" / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(ValueError, match="missing"):
        build_dataset("rafdb", rafdb_root, "train", 32, augment=False)


# --- FERPlus --------------------------------------------------------------------------------

# (usage, name, votes in FERPLUS_VOTE_COLUMNS order, expected target or None when dropped)
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [8, 2, 0, 0, 0, 0, 0, 0, 0, 0], 0),
    ("Training", "fer0000001.png", [0, 5, 5, 0, 0, 0, 0, 0, 0, 0], None),  # tie
    ("Training", "fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),  # not a face
    ("Training", "fer0000003.png", [0, 6, 0, 3, 1, 0, 0, 0, 0, 0], 1),  # the single anger vote is noise
    ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),  # removed from FERPlus: no name
    ("PublicTest", "fer0000005.png", [0, 0, 0, 0, 0, 3, 0, 7, 0, 0], 7),
    ("PrivateTest", "fer0000006.png", [0, 0, 0, 0, 0, 0, 9, 0, 1, 0], 6),
    ("Training", "fer0000007.png", [0, 4, 0, 0, 0, 0, 0, 0, 6, 0], None),  # unknown majority
]


def _write_ferplus(root: Path, with_files: bool, with_pixels: bool, nested: bool = False) -> None:
    """FERPlus's two label files (``fer2013new.csv`` and each split folder's ``label.csv``) with
    the images as PNG files (in ``data/`` when ``nested``, as microsoft/FERPlus lays them out)
    and/or as Kaggle's ``fer2013.csv`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    base = root / "data" if nested else root
    with (root / "fer2013new.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", *FERPLUS_VOTE_COLUMNS])
        for usage, name, votes, _ in FERPLUS_ROWS:
            w.writerow([usage, name, *votes])
    for usage, folder in folders.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        with (base / folder / "label.csv").open("w", newline="") as f:
            for row_usage, name, votes, _ in FERPLUS_ROWS:
                if row_usage == usage and name:
                    csv.writer(f).writerow([name, "(0, 0, 48, 48)", *votes])
    if with_pixels:
        with (root / "fer2013.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels", "Usage"])
            for i, (usage, _, _, _) in enumerate(FERPLUS_ROWS):
                w.writerow([0, " ".join(map(str, _noise(48, 48, i, grey=True).ravel())), usage])
    if with_files:
        for i, (usage, name, _, _) in enumerate(FERPLUS_ROWS):
            if name:
                _save(base / folders[usage] / name, _noise(48, 48, i, grey=True))


def test_ferplus_majority_rule() -> None:
    for _, name, votes, expected in FERPLUS_ROWS:
        if name:  # a nameless row is dropped by the dataset whatever its votes
            assert ferplus_majority(votes) == expected, votes
    soft = ferplus_soft_target([0, 6, 0, 3, 1, 0, 0, 0, 0, 0])
    assert soft.shape == (8,) and soft.dtype == np.float32
    np.testing.assert_allclose(soft, [0, 6 / 9, 0, 3 / 9, 0, 0, 0, 0], rtol=1e-6)


def test_ferplus_dataset_from_files_and_from_pixels(tmp_path: Path) -> None:
    _write_ferplus(tmp_path / "files", with_files=True, with_pixels=False)
    _write_ferplus(tmp_path / "pixels", with_files=False, with_pixels=True)
    from_files = build_dataset("ferplus", tmp_path / "files", "train", 48, augment=False)
    from_pixels = build_dataset("ferplus", tmp_path / "pixels", "train", 48, augment=False, source="pixels")
    assert from_files.labels == FERPLUS_LABELS
    assert from_files.targets == from_pixels.targets == [0, 1]
    item = from_files[0]
    _check_item(item, 48)
    assert item["soft_label"].dtype == torch.float32
    torch.testing.assert_close(item["soft_label"], torch.tensor([0.8, 0.2, 0, 0, 0, 0, 0, 0]))
    # greyscale as three equal channels, identical whichever source the pixels come from
    assert torch.equal(item["image"][0], item["image"][2])
    torch.testing.assert_close(item["image"], from_pixels[0]["image"])
    assert from_files.paths[1].name == "fer0000003.png"
    assert build_dataset("ferplus", tmp_path / "files", "val", 48, augment=False).targets == [7]
    assert build_dataset("ferplus", tmp_path / "files", "test", 48, augment=False).targets == [6]

    batch = next(iter(DataLoader(from_files, batch_size=2)))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["soft_label"].shape == (2, 8)
    assert batch["label"].tolist() == [0, 1]


def test_ferplus_reads_either_label_file_and_the_data_folder_layout(tmp_path: Path) -> None:
    """``label.csv`` (the default, what Microsoft's training code reads) and ``fer2013new.csv``
    disagree on some rows; each row names its own image, and ``data/`` holds the split folders."""
    _write_ferplus(tmp_path, with_files=True, with_pixels=False, nested=True)
    label_csv = tmp_path / "data" / "FER2013Train" / "label.csv"
    rows = list(csv.reader(label_csv.open()))
    rows[0][2:] = [
        "0",
        "0",
        "9",
        "1",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
    ]  # fer0000000: surprise here, neutral in fer2013new.csv
    rows.reverse()  # file order is not image order
    with label_csv.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    by_label = build_dataset("ferplus", tmp_path, "train", 48, augment=False)
    by_new = build_dataset("ferplus", tmp_path, "train", 48, augment=False, votes="new")
    assert [p.name for p in by_label.paths] == ["fer0000003.png", "fer0000000.png"]
    assert by_label.targets == [1, 2]
    assert [p.name for p in by_new.paths] == ["fer0000000.png", "fer0000003.png"] and by_new.targets == [0, 1]
    torch.testing.assert_close(by_label[1]["image"], by_new[0]["image"])
    # Another copy of the images (aligned faces) in the same split folders, labels unchanged.
    copy = tmp_path / "aligned" / "FER2013Train"
    copy.mkdir(parents=True)
    for name in ("fer0000000.png", "fer0000003.png"):
        _save(copy / name, _noise(48, 48, 99, grey=True))
    moved = build_dataset("ferplus", tmp_path, "train", 48, augment=False, images=str(tmp_path / "aligned"))
    assert moved.targets == by_label.targets and moved.paths[0].parent == copy
    with pytest.raises(ValueError, match="votes"):
        build_dataset("ferplus", tmp_path, "train", 48, augment=False, votes="other")
    label_csv.unlink()
    with pytest.raises(ValueError, match="label.csv"):
        build_dataset("ferplus", tmp_path, "train", 48, augment=False)
    with pytest.raises(ValueError, match="missing"):
        (copy / "fer0000003.png").unlink()
        build_dataset("ferplus", tmp_path, "train", 48, augment=False, votes="new", images=str(tmp_path / "aligned"))


# --- AffectNet ------------------------------------------------------------------------------


def _landmarks_68(five: np.ndarray) -> np.ndarray:
    """68 points whose derived 5 points are ``five`` (the rest spread over the face)."""
    pts = np.stack([np.linspace(10, 100, 68), np.linspace(15, 105, 68)], axis=1)
    pts[36:42], pts[42:48], pts[30], pts[48], pts[54] = five[0], five[1], five[2], five[3], five[4]
    return pts


def _write_affectnet(root: Path) -> np.ndarray:
    """Rows with expressions 0, 1, 7, 8, 10, 6; returns the (112, 112, 3) face all rows show."""
    face = _noise(112, 112, 7)
    _save(root / "Manually_Annotated_Images" / "1" / "a.png", face)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]  # fmt: skip
    marks = ";".join(f"{v:.4f}" for v in _landmarks_68(TEMPLATE_112).ravel())
    rows = [
        ["1/a.png", 0, 0, 112, 112, marks, 0, 0.1, 0.2],
        ["1/a.png", 0, 0, 112, 112, "", 1, 0.5, 0.3],  # no landmarks: the face box is used
        ["1/a.png", 0, 0, 112, 112, marks, 7, -0.2, 0.1],  # contempt
        ["1/a.png", 0, 0, 112, 112, marks, 8, 0, 0],  # none: dropped
        ["1/a.png", 0, 0, 112, 112, marks, 10, -2, -2],  # no face: dropped
    ]
    for name in ("training.csv", "validation.csv"):
        with (root / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows + ([["1/a.png", 0, 0, 112, 112, marks, 6, -0.5, 0.6]] if name == "validation.csv" else []))
    return face


def test_affectnet_class_filtering_and_alignment(tmp_path: Path) -> None:
    face = _write_affectnet(tmp_path)
    eight = build_dataset("affectnet", tmp_path, "train", 112, augment=False)
    seven = build_dataset("affectnet7", tmp_path, "train", 112, augment=False)
    val = build_dataset("affectnet", tmp_path, "val", 112, augment=False, num_classes=7)
    assert eight.labels == AFFECTNET_LABELS and len(eight.labels) == 8
    assert seven.labels == AFFECTNET_LABELS[:7] and "contempt" not in seven.labels
    assert eight.targets == [0, 1, 7] and seven.targets == [0, 1] and val.targets == [0, 1, 6]
    expected = to_tensor(face)
    # Landmarks placed on the template: alignment is the identity.
    aligned = eight[0]
    _check_item(aligned, 112)
    torch.testing.assert_close(aligned["image"], expected, atol=1.5 / 255, rtol=0)
    # No landmarks: the square crop of the whole-image box is the identity too.
    torch.testing.assert_close(eight[1]["image"], expected, atol=1.5 / 255, rtol=0)
    with pytest.raises(ValueError, match="7 or 8"):
        build_dataset("affectnet", tmp_path, "train", 112, augment=False, num_classes=6)


def test_affectnet_precropped_moves_landmarks_into_the_crop(tmp_path: Path) -> None:
    face = _noise(112, 112, 3)
    _save(tmp_path / "9" / "b.png", face)  # images straight under root
    # The crop was a 224-pixel box at (10, 20) of the original, stored at half size.
    original_marks = _landmarks_68(TEMPLATE_112 * 2 + [10, 20])
    marks = ";".join(f"{v:.4f}" for v in original_marks.ravel())
    with (tmp_path / "training.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["9/b.png", 10, 20, 224, 224, marks, 3, 0, 0]])  # headerless copy
    ds = build_dataset("affectnet", tmp_path, "train", 112, augment=False, face="align", precropped=True)
    assert ds.targets == [3]
    torch.testing.assert_close(ds[0]["image"], to_tensor(face), atol=1.5 / 255, rtol=0)


def test_five_points_and_box_crop() -> None:
    np.testing.assert_allclose(five_points_from_68(_landmarks_68(TEMPLATE_112)), TEMPLATE_112)
    image = _noise(60, 80, 1)
    # A 40x40 box at (20, 10) cropped to 40 pixels is exactly that region.
    np.testing.assert_array_equal(crop_box(image, (20, 10, 40, 40), 40), image[10:50, 20:60])


# --- folder ---------------------------------------------------------------------------------


def test_folder_labels_sorted_or_from_labels_txt_and_unlabeled(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "sad" / "b.jpg", _noise(40, 40, 1))
    _save(tmp_path / "train" / "happy" / "a.png", _noise(40, 50, 2))
    _save(tmp_path / "train" / "happy" / "sub" / "c.bmp", _noise(30, 30, 3))
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")
    ds = build_dataset("folder", tmp_path, "train", 24, augment=False)
    assert ds.labels == ["happy", "sad"] and ds.targets == [0, 0, 1]
    _check_item(ds[2], 24)

    (tmp_path / "labels.txt").write_text("sad\nhappy\nangry\n")
    ds = build_dataset("folder", tmp_path, "train", 24, augment=False)
    assert ds.labels == ["sad", "happy", "angry"] and sorted(ds.targets) == [0, 1, 1]

    _save(tmp_path / "pretrain" / "x.png", _noise(40, 40, 4))
    _save(tmp_path / "pretrain" / "y.webp", _noise(40, 40, 5))
    unlabeled = build_dataset("folder", tmp_path, "pretrain", 24, augment=True)
    assert unlabeled.targets == [-1, -1]
    assert int(unlabeled[1]["label"]) == -1


def test_build_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data kind"):
        build_dataset("imagenet", tmp_path, "train", 32, augment=False)
    with pytest.raises(ValueError, match="no folder"):
        build_dataset("folder", tmp_path, "train", 32, augment=False)
    with pytest.raises(ValueError, match="label.csv"):
        build_dataset("ferplus", tmp_path, "train", 32, augment=False)
    with pytest.raises(ValueError, match="list_patition_label"):
        build_dataset("rafdb", tmp_path, "train", 32, augment=False)
    with pytest.raises(ValueError, match="training.csv"):
        build_dataset("affectnet", tmp_path, "train", 32, augment=False)
    with pytest.raises(ValueError, match="not a folder"):
        build_dataset("rafdb", tmp_path / "absent", "train", 32, augment=False)


# --- augmentations and sampling -------------------------------------------------------------


def test_augmentations_keep_shape_and_range_and_follow_the_seed() -> None:
    image = _noise(50, 40, 11)
    transform = FaceTransform(image_size=32, augment=True, erase_p=1.0)
    runs = [transform(image, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    for x in runs:
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    plain = FaceTransform(image_size=32)(image)
    assert not torch.equal(runs[0], plain)
    assert torch.equal(FaceTransform(image_size=50)(_noise(50, 50, 1)), to_tensor(_noise(50, 50, 1)))


def test_flip_and_neutral_affine() -> None:
    x = to_tensor(_noise(16, 16, 5))
    assert torch.equal(hflip(x)[:, :, 0], x[:, :, -1])
    # translate 0 and scale 1: the affine must change nothing
    torch.testing.assert_close(random_affine(x, 0.0, (1.0, 1.0), torch.Generator().manual_seed(0)), x)


def test_balanced_sampler_weights() -> None:
    targets = [0, 0, 0, 1, -1, 2]
    weights = sample_weights(targets, num_classes=4)
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 0.0, 1.0], dtype=torch.float64))
    sampler = balanced_sampler(targets, num_classes=4, num_samples=3000, generator=torch.Generator().manual_seed(0))
    drawn = torch.bincount(torch.tensor([targets[i] for i in sampler]), minlength=3)
    assert len(list(sampler)) == 3000 and 4 not in list(sampler)
    assert (drawn - 1000).abs().max() < 150  # each class about a third
    with pytest.raises(ValueError):
        sample_weights([0, 5], num_classes=3)
