"""Engine: one-batch overfit, exact resume, soft labels / mixup / R1 paths, evaluation outputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TinyFaces, micro_overrides
from training.config import LossWeights, PFViTConfig, PretrainConfig, TrainConfig
from training.engine import run_pretrain, run_train, targets_from_batch
from training.model import PFViT, SeparationObjective, weighted_total


def _batch(n: int = 6, soft: bool = False) -> dict[str, torch.Tensor]:
    ds = TinyFaces(n, soft=soft)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_one_batch_overfit() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    labels = TinyFaces.labels
    model = PFViT(PFViTConfig(**micro_overrides(), num_classes=3, labels=labels))
    objective = SeparationObjective(model, labels.index("neutral"))
    batch = _batch()
    x = model.normalise(batch["image"])
    targets, labelled = targets_from_batch(batch, 3, torch.device("cpu"))
    opt = torch.optim.AdamW(model.optim_groups("main", 0.0), lr=2e-3)
    weights = LossWeights()
    first = None
    for _ in range(60):
        out = objective(x, targets, labelled, model.normalise(batch["poker_face"]))
        total = weighted_total(out.losses, weights)
        first = first if first is not None else {k: float(v.detach()) for k, v in out.losses.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(out.losses["cls"]) < 0.05, out.losses
    assert float(out.losses["rec"]) < 0.5 * first["rec"]
    assert float(out.losses["poker_sup"]) < 0.5 * first["poker_sup"]


def _train_cfg(tmp: Path, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(tmp), epochs=2, batch_size=4, warmup_epochs=0.5, max_steps_per_epoch=2, threads=2,
                       progress=False, save_every=1, eval_every=0, **kw)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines() if "summary" not in line]




@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A micro MAE checkpoint (1 epoch, 2 steps) that initialises the train-stage tests."""
    import training.model as model_module

    out = tmp_path_factory.mktemp("pretrain")
    original = model_module.FACTORIES["micro"]
    model_module.FACTORIES["micro"] = lambda **kw: original(**{**micro_overrides(), **kw})
    try:
        cfg = PretrainConfig(out_dir=str(out), epochs=1, batch_size=4, warmup_epochs=0.5, max_steps_per_epoch=2,
                             threads=2, progress=False)
        result = run_pretrain(cfg, TinyFaces(8))
    finally:
        model_module.FACTORIES["micro"] = original
    assert result["history"][0]["loss"] > 0
    return result["checkpoint"]


def test_pretrain_resume_is_exact(tmp_path: Path, pretrained: str) -> None:
    # Two epochs straight through, against the second epoch resumed from the first's checkpoint.
    full = PretrainConfig(out_dir=str(tmp_path / "full"), epochs=3, batch_size=4, warmup_epochs=0.5,
                          max_steps_per_epoch=2, threads=2, progress=False, save_every=1, resume=pretrained)
    run_pretrain(full, TinyFaces(8))
    again = replace(full, out_dir=str(tmp_path / "again"), resume=str(tmp_path / "full" / "checkpoint-0002.pt"))
    run_pretrain(again, TinyFaces(8))
    a, b = _log(tmp_path / "full"), _log(tmp_path / "again")
    assert [r["step"] for r in a] == [3, 4, 5, 6] and [r["step"] for r in b] == [5, 6]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a[2:]], abs=1e-6)


def test_train_resume_gives_same_next_step_loss(tmp_path: Path, pretrained: str) -> None:
    cfg = _train_cfg(tmp_path / "full", init=pretrained, r1_gamma=1.0, r1_every=2)
    result = run_train(cfg, TinyFaces(8), TinyFaces(6, seed=1))
    full = _log(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert {"cls", "rec", "adv_poker", "adv_rec", "cyc_neutral", "cyc_residue", "poker_sup", "d", "total"} <= set(full[0])
    assert result["metrics"] is not None
    for name in ("metrics.json", "confusion.png", "samples.png"):
        assert (tmp_path / "full" / "eval" / name).is_file()
    resumed_cfg = replace(cfg, out_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "checkpoint-0001.pt"))
    run_train(resumed_cfg, TinyFaces(8), TinyFaces(6, seed=1))
    resumed = _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [3, 4]
    for got, want in zip(resumed, full[2:]):
        assert got["total"] == pytest.approx(want["total"], abs=1e-6)
        assert got["d"] == pytest.approx(want["d"], abs=1e-6)


def test_soft_labels_mixup_nonsat(tmp_path: Path, pretrained: str) -> None:
    cfg = replace(_train_cfg(tmp_path, init=pretrained, mixup_alpha=0.4, gan="nonsat", label_smoothing=0.1), epochs=1, save_every=0)
    result = run_train(cfg, TinyFaces(8, soft=True))
    record = result["history"][-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values() if isinstance(v, float))
    assert (tmp_path / "last.pt").is_file()
