"""Engine and the PF-ViT stage's objective: learning on a fixed batch, exact resume with both
samplers, each optional loss switch changing the loss, per-epoch augmentation, checkpoints
that keep the discriminator apart from the model, batches with only some true poker faces."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset

from tests.training.conftest import IMAGE_SIZE, TINY_LABELS, micro_arch, micro_overrides, tiny_faces
from training.adversarial import PokerFaceObjective, build_discriminator, poker_face_distance, prepare_batch
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import PFViTConfig, PretrainConfig, TrainConfig
from training.data import build_data
from training.data.synthetic import SyntheticFaces
from training.distributed import setup
from training.engine import run_pretrain, run_train
from training.model import PFViT


def _batch(n: int = 6, soft: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    ds = tiny_faces(n, seed=seed, soft=soft)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _objective(**kw) -> tuple[PFViT, PokerFaceObjective]:
    torch.manual_seed(0)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS)))
    objective = PokerFaceObjective(
        model, build_discriminator(model.config), TrainConfig(**kw), TINY_LABELS.index("neutral"), setup("cpu", 2)
    )
    return model, objective


def test_generator_side_learns_a_fixed_batch() -> None:
    model, objective = _objective()
    batch = prepare_batch(_batch(), model, torch.device("cpu"))
    opt = torch.optim.AdamW(model.optim_groups(0.0), lr=2e-3)
    first = None
    for _ in range(60):
        out = objective.generator_loss(batch)
        first = first or {k: float(v.detach()) for k, v in out.terms.items()} | {"total": float(out.total.detach())}
        opt.zero_grad()
        out.total.backward()
        opt.step()
    # D never took a gradient from the generator side: it reads D through detached parameters.
    assert all(p.grad is None for p in objective.discriminator.parameters())
    last = {k: float(v.detach()) for k, v in out.terms.items()} | {"total": float(out.total.detach())}
    assert last["total"] < 0.5 * first["total"]
    assert last["cls"] < 0.05 < first["cls"]
    assert last["rec"] < 0.5 * first["rec"]
    assert last["poker_sup"] < 0.5 * first["poker_sup"]
    with torch.no_grad():
        assert (model(batch.images).argmax(1) == batch.targets.argmax(1)).float().mean() == 1.0


def test_poker_term_averages_over_items_that_have_a_true_poker_face() -> None:
    model, objective = _objective()
    raw = _batch(6)
    has = torch.tensor([True, False, True, False, False, True])
    raw["has_poker_face"] = has
    # Items without a true poker face carry any placeholder: it must not count.
    raw["poker_face"] = torch.where(has[:, None, None, None], raw["poker_face"], torch.rand_like(raw["poker_face"]))
    batch = prepare_batch(raw, model, torch.device("cpu"))
    torch.manual_seed(1)
    got = objective.generator_loss(batch)
    torch.manual_seed(1)
    only = prepare_batch({k: v[has] for k, v in raw.items()}, model, torch.device("cpu"))
    with torch.no_grad():
        z = model.forward_features(only.images)
        _, z_p = model.separate(z)
        want = poker_face_distance(model.synthesize_poker(only.images, z, z_p), only.true_poker).mean()
    assert float(got.terms["poker_sup"].detach()) == pytest.approx(float(want), rel=1e-5)
    # No true poker face at all: the term is zero (and still in the graph, for DDP).
    raw["has_poker_face"] = torch.zeros(6, dtype=torch.bool)
    assert (
        float(objective.generator_loss(prepare_batch(raw, model, torch.device("cpu"))).terms["poker_sup"].detach())
        == 0.0
    )


def test_poker_face_distance_weighs_edges() -> None:
    flat = torch.zeros(2, 3, 8, 8)
    # A uniform offset moves no edge: the distance is the pixel L1 alone.
    assert poker_face_distance(flat + 0.5, flat).tolist() == pytest.approx([0.5, 0.5])
    # The same mean pixel error as a stripe pattern also moves edges, and costs more.
    stripes = flat.clone()
    stripes[..., ::2] = 1.0
    assert float(poker_face_distance(stripes, flat)[0]) > 0.5 + 0.4


def test_squared_poker_face_distance_prefers_the_mean_change() -> None:
    """A change present in one face of two and absent in the other: L1 is indifferent between
    no change and half the change, L2 prefers half (the mean), the PSNR-optimal answer."""
    target = torch.zeros(2, 3, 8, 8)
    target[0] += 0.4  # one face changed, one not: the generator cannot tell them apart
    for guess, l1_cost, l2_cost in ((0.0, 0.2, 0.08), (0.2, 0.2, 0.04)):
        poker = torch.full_like(target, guess)
        assert float(poker_face_distance(poker, target, "l1").mean()) == pytest.approx(l1_cost)
        assert float(poker_face_distance(poker, target, "l2").mean()) == pytest.approx(l2_cost)


def test_poker_sup_loss_is_checked() -> None:
    with pytest.raises(ValueError, match="poker_sup_loss"):
        TrainConfig(poker_sup_loss="l3")


def test_each_switch_changes_the_loss() -> None:
    soft = _batch(6, soft=True)
    hard = {k: v for k, v in soft.items() if k != "soft_label"}

    def losses(raw: dict, **kw) -> dict[str, float]:
        model, objective = _objective(**kw)
        torch.manual_seed(3)
        batch = prepare_batch(raw, model, torch.device("cpu"), kw.get("mixup_alpha", 0.0))
        out = objective.generator_loss(batch)
        real = batch.images
        d, _ = objective.discriminator_loss(real, out.fakes, step=1)
        return {
            "cls": float(out.terms["cls"].detach()),
            "adv": float(out.terms["adv_poker"].detach()),
            "d": float(d.detach()),
            "total": float(out.total.detach()),
        }

    base = losses(hard)
    assert losses(soft)["cls"] != pytest.approx(base["cls"])  # soft labels are used
    assert losses(hard, mixup_alpha=0.4)["total"] != pytest.approx(base["total"])
    assert losses(hard, label_smoothing=0.1)["cls"] != pytest.approx(base["cls"])
    nonsat = losses(hard, gan="nonsat")
    assert nonsat["adv"] != pytest.approx(base["adv"]) and nonsat["d"] != pytest.approx(base["d"])
    assert losses(hard, r1_gamma=10.0, r1_every=1)["d"] > base["d"]


def _train_cfg(tmp: Path, **kw) -> TrainConfig:
    return TrainConfig(
        out_dir=str(tmp),
        epochs=2,
        batch_size=4,
        warmup_epochs=0.5,
        max_steps_per_epoch=2,
        threads=2,
        progress=False,
        save_every=1,
        eval_every=0,
        **kw,
    )


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines() if "summary" not in line]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A micro MAE checkpoint (1 epoch, 2 steps) that initialises the train-stage tests."""
    out = tmp_path_factory.mktemp("pretrain")
    cfg = PretrainConfig(
        out_dir=str(out),
        arch=micro_arch(),
        epochs=1,
        batch_size=4,
        warmup_epochs=0.5,
        max_steps_per_epoch=2,
        threads=2,
        progress=False,
    )
    result = run_pretrain(cfg, tiny_faces(8))
    assert result.history[0]["loss"] > 0 and result.discriminator is None
    payload = load_checkpoint(result.checkpoint)
    assert payload["model_config"]["image_size"] == IMAGE_SIZE and "discriminator" not in payload
    return result.checkpoint


def test_pretrain_resume_is_exact(tmp_path: Path, pretrained: str) -> None:
    # Two epochs straight through, against the second epoch resumed from the first's checkpoint.
    full = PretrainConfig(
        out_dir=str(tmp_path / "full"),
        epochs=3,
        batch_size=4,
        warmup_epochs=0.5,
        max_steps_per_epoch=2,
        threads=2,
        progress=False,
        save_every=1,
        resume=pretrained,
    )
    run_pretrain(full, tiny_faces(8))
    again = replace(full, out_dir=str(tmp_path / "again"), resume=str(tmp_path / "full" / "checkpoint-0002.pt"))
    run_pretrain(again, tiny_faces(8))
    a, b = _log(tmp_path / "full"), _log(tmp_path / "again")
    assert [r["step"] for r in a] == [3, 4, 5, 6] and [r["step"] for r in b] == [5, 6]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a[2:]], abs=1e-6)


@pytest.mark.parametrize("sampler", ["distributed", "balanced"])
def test_train_resume_gives_same_next_step_loss(tmp_path: Path, pretrained: str, sampler: str) -> None:
    cfg = _train_cfg(tmp_path / "full", init=pretrained, r1_gamma=1.0, r1_every=2, sampler=sampler)
    result = run_train(cfg, tiny_faces(8), tiny_faces(6, seed=1))
    full = _log(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert {"cls", "rec", "adv_poker", "adv_rec", "cyc_neutral", "cyc_residue", "poker_sup", "d", "total"} <= set(
        full[0]
    )
    assert result.metrics is not None
    for name in ("metrics.json", "confusion.png", "samples.png"):
        assert (tmp_path / "full" / "eval" / name).is_file()
    # The model state carries E, S, G, H only; D travels beside it, for resuming.
    payload = load_checkpoint(result.checkpoint)
    assert not any(k.startswith("discriminator") for k in payload["model"])
    assert payload["discriminator"].keys() == result.discriminator.state_dict().keys()
    model, _ = model_from_checkpoint(payload)
    assert model.config.labels == list(TINY_LABELS)
    resumed_cfg = replace(cfg, out_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "checkpoint-0001.pt"))
    run_train(resumed_cfg, tiny_faces(8), tiny_faces(6, seed=1))
    resumed = _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [3, 4]
    for got, want in zip(resumed, full[2:]):
        assert got["total"] == pytest.approx(want["total"], abs=1e-6)
        assert got["d"] == pytest.approx(want["d"], abs=1e-6)


def test_training_beats_chance(tmp_path: Path) -> None:
    """A few epochs from scratch on the synthetic classes: training accuracy well above chance."""
    data = SyntheticFaces(48, IMAGE_SIZE, labels=TINY_LABELS)
    cfg = TrainConfig(
        out_dir=str(tmp_path),
        arch=micro_arch(),
        epochs=8,
        batch_size=8,
        blr=0.1,
        warmup_epochs=0.5,
        threads=2,
        progress=False,
        eval_every=0,
    )
    result = run_train(cfg, data, SyntheticFaces(24, IMAGE_SIZE, seed=5, labels=TINY_LABELS))
    losses = [h["cls"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["accuracy"] >= 0.6, result.metrics["accuracy"]  # chance is 1/3


class EpochNoise(SyntheticFaces):
    """Synthetic items plus noise drawn from (epoch, index): an augmentation that must change per epoch."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.epoch = 0
        self.seen: list[tuple[int, int]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        self.seen.append((self.epoch, index))
        g = torch.Generator().manual_seed(self.epoch * 10_007 + index)
        item["image"] = (item["image"] + 0.05 * torch.randn(item["image"].shape, generator=g)).clamp(0, 1)
        return item


def test_augmentation_differs_between_epochs(tmp_path: Path) -> None:
    inner = EpochNoise(8, IMAGE_SIZE, labels=TINY_LABELS)
    cfg = PretrainConfig(
        out_dir=str(tmp_path), arch=micro_arch(), epochs=2, batch_size=4, warmup_epochs=0.5, threads=2, progress=False
    )
    run_pretrain(cfg, ConcatDataset([inner]))  # set_epoch reaches datasets inside wrappers too
    assert {epoch for epoch, _ in inner.seen} == {0, 1}
    first, second = inner.seen[:8], inner.seen[8:]
    inner.set_epoch(0)
    a = torch.stack([inner[i]["image"] for i in range(8)])
    inner.set_epoch(1)
    b = torch.stack([inner[i]["image"] for i in range(8)])
    assert len(first) == len(second) == 8 and not torch.equal(a, b)


def test_rendered_faces_are_augmented_anew_each_epoch() -> None:
    data = build_data("rendered:n=8", "train", 32, augment=True)
    draws = []
    for epoch in (0, 1):
        data.set_epoch(epoch)
        draws.append(torch.stack([data[i]["image"] for i in range(8)]))
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[1], torch.stack([data[i]["image"] for i in range(8)]))  # a pure function of (item, epoch)


def test_cycle_trains_the_generator_not_the_recogniser() -> None:
    """The cycle terms read the poker face with E, S and H frozen: they reach the generator,
    never the head (which would otherwise learn to call generated faces neutral)."""
    from training.adversarial import SeparationForward

    model = PFViT(
        PFViTConfig.from_dict(
            {**PFViTConfig(**micro_overrides()).to_dict(), "labels": ["a", "neutral"], "poker_mode": "edit"}
        )
    )
    out = SeparationForward(model)(torch.randn(2, 3, model.config.image_size, model.config.image_size))
    (out.cycle_logits.sum() + out.cycle_z_p.sum()).backward()
    assert model.head.fc.weight.grad is None
    assert model.generator.pred.weight.grad is not None and float(model.generator.pred.weight.grad.abs().sum()) > 0


def test_stage_without_separation_trains_the_recogniser_alone_and_resumes(tmp_path: Path, pretrained: str) -> None:
    """The separation ablation: the same stage, data and schedule, on the classification term
    alone; the generator keeps the pre-trained weights, no D is built, and resume is exact."""
    cfg = _train_cfg(tmp_path / "full", init=pretrained, separation=False)
    result = run_train(cfg, tiny_faces(8, soft=True), tiny_faces(6, seed=1))
    full = _log(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert set(full[0]) >= {"cls", "total"} and not {"rec", "d", "poker_sup"} & set(full[0])
    assert result.discriminator is None
    payload = load_checkpoint(result.checkpoint)
    start = load_checkpoint(pretrained)["model"]
    for name, value in payload["model"].items():
        if name.startswith("generator."):
            assert torch.equal(value, start[name]), name
    assert not torch.equal(
        payload["model"]["encoder.blocks.0.attn.qkv.weight"], start["encoder.blocks.0.attn.qkv.weight"]
    )
    resumed_cfg = replace(cfg, out_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "checkpoint-0001.pt"))
    run_train(resumed_cfg, tiny_faces(8, soft=True), tiny_faces(6, seed=1))
    resumed = _log(tmp_path / "resumed")
    assert [r["total"] for r in resumed] == pytest.approx([r["total"] for r in full[2:]], abs=1e-6)


def test_a_pfvit_stage_checkpoint_continues_whole_under_a_new_schedule(tmp_path: Path, pretrained: str) -> None:
    """The warm restart: given a PF-ViT stage checkpoint as ``init``, the stage starts from all
    of it, separator, head and D included (an MAE checkpoint gives only encoder and generator),
    with fresh optimizers and a schedule of its own."""
    first = run_train(_train_cfg(tmp_path / "first", init=pretrained), tiny_faces(8), tiny_faces(6, seed=1))
    start = load_checkpoint(first.checkpoint)
    # A learning rate so small that one epoch leaves every weight where it started.
    cfg = replace(_train_cfg(tmp_path / "restart", init=first.checkpoint, blr=1e-12, d_blr=1e-12), epochs=1)
    restarted = run_train(cfg, tiny_faces(8), tiny_faces(6, seed=1))
    payload = load_checkpoint(restarted.checkpoint)
    assert payload["step"] == 2 and payload["epoch"] == 1  # its own count, not the first run's
    for part, state in (("model", payload["model"]), ("discriminator", payload["discriminator"])):
        for name, value in state.items():
            if "running_" in name or "num_batches" in name:
                continue  # batch-norm statistics follow the batches whatever the learning rate
            torch.testing.assert_close(value, start[part][name], atol=1e-6, rtol=0, msg=f"{part} {name}")
    # From the MAE checkpoint the head starts fresh: the same run then ends elsewhere.
    fresh = run_train(
        replace(_train_cfg(tmp_path / "fresh", init=pretrained, blr=1e-12, d_blr=1e-12), epochs=1),
        tiny_faces(8),
        tiny_faces(6, seed=1),
    )
    assert not torch.allclose(
        load_checkpoint(fresh.checkpoint)["model"]["head.fc.weight"], start["model"]["head.fc.weight"]
    )
