"""The judge classifier: it learns, it resumes instead of retraining, and its poker-face
report counts what it says it counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training.judge import JudgeCNN, JudgeConfig, load_judge, poker_face_report, predict, save_judge, train_judge  # noqa: E402

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


class Stripes(torch.utils.data.Dataset):
    """Class k: a bright horizontal stripe at row band k on noise."""

    labels = ["neutral", "happiness", "anger"]

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, 3, (n,), generator=g)
        self.images = torch.rand(n, 3, 16, 16, generator=g) * 0.5
        for i, k in enumerate(self.targets):
            self.images[i, :, 4 * int(k) + 2 : 4 * int(k) + 5] = 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.targets[i]}


def test_judge_learns_and_resumes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = JudgeConfig(out_dir=str(tmp_path), epochs=3, batch_size=32, lr=3e-3, seed=0)
    train, val = Stripes(192, 0), Stripes(96, 1)
    result = train_judge(replace(cfg, epochs=3), train, val, MEAN, STD)
    assert result.val_accuracy > 0.9  # chance is 1/3
    # Finished: a rerun loads the same weights instead of training again.
    again = train_judge(cfg, train, val, MEAN, STD)
    for a, b in zip(result.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    # Kept as plain data beside a model, it predicts exactly as trained.
    loaded = load_judge(save_judge(result, tmp_path / "kept" / "judge.pt"))
    assert loaded.labels == result.labels and loaded.val_accuracy == result.val_accuracy
    assert torch.equal(predict(loaded.model, val.images, MEAN, STD), predict(result.model, val.images, MEAN, STD))
    with pytest.raises(ValueError, match="another judge configuration"):
        train_judge(replace(cfg, lr=1e-3), train, val, MEAN, STD)


def test_poker_face_report_counts() -> None:
    labels = ["neutral", "happiness", "anger"]
    judge = JudgeCNN(3)
    # A judge that reads a face by its mean brightness: dark neutral, mid happiness, bright anger.
    judge.forward = lambda x: torch.stack(
        [-(x.mean((1, 2, 3)) + 2).abs(), -(x.mean((1, 2, 3))).abs(), -(x.mean((1, 2, 3)) - 2).abs()], 1
    )
    level = {0: 0.0, 1: 0.5, 2: 1.0}  # in [0, 1]; normalised: -2, 0, 2
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    inputs = torch.stack([torch.full((3, 4, 4), level[int(t)]) for t in targets])
    # Poker faces: one of the two neutral inputs stays neutral; of the four expressive faces, three become neutral.
    poker = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 0.0, 0.0, 0.0, 1.0)])
    report = poker_face_report(judge, labels, inputs, poker, targets, MEAN, STD)
    assert report["judge_accuracy"] == 1.0
    assert report["neutral_recall"] == 1.0
    assert report["poker_neutral_share"] == 0.75
    assert report["poker_neutral_ratio"] == 0.75
    assert report["per_class"]["anger"] == {"n": 2, "inputs_read_neutral": 0.0, "poker_read_neutral": 0.5}
