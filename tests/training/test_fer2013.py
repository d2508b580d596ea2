"""FER2013 in both of Kaggle's forms, on small generated stand-ins (the real set never enters
the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from service.vision.imaging import encode_png
from training.data.fer2013 import FER2013, FER2013_LABELS, export_csv
from training.data.transforms import FaceTransform


def _grey(value: int) -> np.ndarray:
    return np.full((48, 48, 3), value, dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))


@pytest.fixture()
def folder_form(tmp_path: Path) -> Path:
    root = tmp_path / "fer2013"
    _write(root / "train" / "happy" / "Training_10.png", _grey(10))
    _write(root / "train" / "angry" / "Training_2.png", _grey(20))
    # An augmented copy some redistributions add: never an original.
    _write(root / "train" / "happy" / "Training_10.jpg3.png", _grey(30))
    # Split by the file-name prefix, not by the folder it sits in.
    _write(root / "train" / "sad" / "PublicTest_5.png", _grey(40))
    _write(root / "test" / "neutral" / "PrivateTest_7.png", _grey(50))
    return root


def test_folder_form_splits_by_prefix_and_skips_copies(folder_form: Path) -> None:
    transform = FaceTransform(image_size=48, augment=False)
    train = FER2013(folder_form, "train", transform)
    assert [p.name for p in train.paths] == ["Training_2.png", "Training_10.png"]  # numeric order
    assert [FER2013_LABELS[t] for t in train.targets] == ["anger", "happiness"]
    val = FER2013(folder_form, "val", transform)
    assert [FER2013_LABELS[t] for t in val.targets] == ["sadness"]
    test = FER2013(folder_form, "test", transform)
    item = test[0]
    assert item["image"].shape == (3, 48, 48)
    assert int(item["label"]) == FER2013_LABELS.index("neutral")
    assert abs(float(item["image"].mean()) - 50 / 255) < 1e-6


def test_csv_form_and_export_read_the_same_faces(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(3, "Training"), (0, "Training"), (6, "PublicTest"), (1, "PrivateTest")]
    pixels = [rng.integers(0, 256, 48 * 48) for _ in rows]
    root = tmp_path / "csv"
    root.mkdir()
    lines = ["emotion,pixels,Usage"] + [f"{e},{' '.join(map(str, p))},{u}" for (e, u), p in zip(rows, pixels)]
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    transform = FaceTransform(image_size=48, augment=False)
    from_csv = FER2013(root, "train", transform)
    assert from_csv.targets == [3, 0]
    assert np.array_equal(from_csv.load_face(0)[:, :, 0].ravel(), pixels[0])

    out = tmp_path / "folders"
    assert export_csv(root / "fer2013.csv", out) == 4
    assert (out / "Training" / "happy" / "Training_0.png").is_file()
    from_folders = FER2013(out, "train", transform)
    assert from_folders.targets == [3, 0]
    for i in range(2):
        assert np.array_equal(from_folders.load_face(i), from_csv.load_face(i))


def test_bad_split_and_empty_root_are_clear_errors(tmp_path: Path) -> None:
    transform = FaceTransform(image_size=48, augment=False)
    with pytest.raises(ValueError, match="no split"):
        FER2013(tmp_path, "holdout", transform)
    with pytest.raises(ValueError, match="no FER2013 Training faces"):
        FER2013(tmp_path, "train", transform)


def test_joint_faces_map_labels_and_mark_poker_faces(folder_form: Path) -> None:
    import torch

    from training.data.joint import JointFaces

    class Rendered(torch.utils.data.Dataset):
        labels = ["neutral", "happiness", "contempt"]
        targets = [1, 2, 0]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            image = torch.zeros(3, 48, 48)
            image[0] = 1.0  # pure red: grey only through the luma
            return {"image": image, "poker_face": image * 0.5, "label": torch.tensor(self.targets[i])}

    real = FER2013(folder_form, "train", FaceTransform(image_size=48, augment=False))
    joint = JointFaces(real, Rendered(), greyscale=True)
    assert joint.labels == FER2013_LABELS
    assert len(joint) == 5
    # Real photos first; rendered labels mapped by name, contempt (not in FER2013) unlabelled.
    assert joint.targets == [0, 3, 3, -1, 6]
    real_item, rendered_item = joint[0], joint[2]
    assert not bool(real_item["has_poker_face"]) and bool(rendered_item["has_poker_face"])
    assert int(rendered_item["label"]) == 3
    assert torch.allclose(rendered_item["image"][0], rendered_item["image"][2])  # grey
    assert abs(float(rendered_item["image"][0, 0, 0]) - 0.299) < 1e-6
    batch = torch.utils.data.default_collate([joint[i] for i in range(5)])
    assert batch["poker_face"].shape == (5, 3, 48, 48)
    # Repeated rendered faces: the same three again, targets and all; nothing past the end.
    twice = JointFaces(real, Rendered(), greyscale=True, rendered_repeat=2)
    assert len(twice) == 8 and twice.targets == [0, 3, 3, -1, 6, 3, -1, 6]
    assert torch.equal(twice[5]["image"], twice[2]["image"]) and int(twice[7]["label"]) == 6
    with pytest.raises(IndexError):
        twice[8]
    with pytest.raises(ValueError, match="rendered_repeat"):
        JointFaces(real, Rendered(), rendered_repeat=0)
