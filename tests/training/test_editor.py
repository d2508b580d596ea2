"""The expression editor ("editor" poker mode) and the editor stage: a fresh editor changes
nothing, a grey model's change is a luma change, the stage trains the editor and nothing else
and resumes exactly, its terms count the right items, and the export serves its poker faces.
With its critic on: the critic reads neutral photographs as real and the poker faces of the
other photographs as fake, travels in the checkpoint apart from the model, and resumes exactly;
with it off, the stage is the one it was before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch

from service.card import load_card, verify_files
from tests.training.conftest import TINY_LABELS, micro_arch, micro_overrides, tiny_faces
from training.adversarial import StageBatch, prepare_batch
from training.checkpoint import TrainState, load_checkpoint, model_from_checkpoint, save_checkpoint
from training.config import EditorConfig, PFViTConfig, TrainConfig
from training.data.joint import JointFaces
from training.distributed import setup
from training.editing import (
    EditorCritic,
    EditorObjective,
    FaceDiscriminator,
    PatchDiscriminator,
    build_critic,
    critic_sets,
    jitter_poker_pairs,
)
from training.engine import run_editor, run_train
from training.export import export_checkpoint
from training.model import PFViT


def _editor_model(**overrides) -> PFViT:
    torch.manual_seed(0)
    return PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS), poker_mode="editor", **overrides)).eval()


def _kick(model: PFViT) -> None:
    """Give the zero-initialised output layer weights, so the editor changes something."""
    with torch.no_grad():
        model.editor.out.weight.normal_(0, 0.05)
        model.editor.out.bias.fill_(0.02)


def test_a_fresh_editor_changes_nothing() -> None:
    for greyscale in (False, True):
        model = _editor_model(greyscale=greyscale)
        images01 = 0.2 + 0.6 * torch.rand(3, 3, 32, 32)
        with torch.no_grad():
            poker = model.poker_face(model.normalise(images01))
        assert torch.allclose(poker, images01, atol=1e-6)
        assert model.num_params("editor") > 0 and PFViT(PFViTConfig(**micro_overrides())).num_params("editor") == 0


def test_a_grey_models_editor_changes_the_luma_alone() -> None:
    model = _editor_model(greyscale=True)
    _kick(model)
    assert model.editor.channels == 1
    images01 = 0.3 + 0.4 * torch.rand(2, 3, 32, 32)  # away from 0 and 1: no clamping
    with torch.no_grad():
        change = model.poker_face(model.normalise(images01)) - images01
    assert float(change.abs().mean()) > 1e-3
    assert torch.allclose(change[:, 0], change[:, 1], atol=1e-5) and torch.allclose(
        change[:, 0], change[:, 2], atol=1e-5
    )
    assert _editor_model(greyscale=False).editor.channels == 3


def test_editor_config_is_checked() -> None:
    with pytest.raises(ValueError, match="poker_mode"):
        PFViTConfig(poker_mode="paint")
    with pytest.raises(ValueError, match="editor_width"):
        PFViTConfig(poker_mode="editor", editor_width=0)


def test_the_terms_count_the_right_items() -> None:
    """poker_sup averages over items with a true poker face; cycle and sparsity over the others."""
    model = _editor_model()
    _kick(model)
    model.requires_grad_(False)
    objective = EditorObjective(model, EditorConfig(), TINY_LABELS.index("neutral"))
    ds = tiny_faces(6)
    raw = {k: torch.stack([ds[i][k] for i in range(6)]) for k in ("image", "label", "poker_face")}
    has = torch.tensor([True, False, True, False, False, True])
    raw["has_poker_face"] = has
    full = objective(prepare_batch(raw, model, torch.device("cpu"))).terms
    rendered = objective(prepare_batch({k: v[has] for k, v in raw.items()}, model, torch.device("cpu"))).terms
    photos = objective(prepare_batch({k: v[~has] for k, v in raw.items()}, model, torch.device("cpu"))).terms
    assert float(full["poker_sup"]) == pytest.approx(float(rendered["poker_sup"]), rel=1e-5)
    for name in ("cyc_neutral", "sparsity"):
        assert float(full[name]) == pytest.approx(float(photos[name]), rel=1e-5)
        assert float(rendered[name]) == 0.0
    assert float(photos["poker_sup"]) == 0.0
    with pytest.raises(ValueError, match="editor"):
        EditorObjective(PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS))), EditorConfig(), 2)


@pytest.fixture(scope="module")
def finished_pfvit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PF-ViT stage checkpoint (two steps) for the editor stage to start from."""
    out = tmp_path_factory.mktemp("pfvit")
    result = run_train(
        TrainConfig(
            out_dir=str(out),
            arch=micro_arch(),
            epochs=1,
            batch_size=4,
            max_steps_per_epoch=2,
            eval_every=0,
            device="cpu",
            threads=2,
            progress=False,
        ),
        tiny_faces(16),
    )
    return Path(result.checkpoint)


def _editor_run(out: Path, init: Path, epochs: int, resume: str = "") -> Path:
    data = tiny_faces(16)
    cfg = EditorConfig(
        out_dir=str(out),
        init=str(init),
        epochs=epochs,
        batch_size=4,
        max_steps_per_epoch=3,
        device="cpu",
        threads=2,
        progress=False,
        resume=resume,
        save_every=1,
    )
    return Path(run_editor(cfg, data).checkpoint)


def test_the_editor_stage_trains_the_editor_alone(finished_pfvit: Path, tmp_path: Path) -> None:
    ckpt = _editor_run(tmp_path / "a", finished_pfvit, epochs=2)
    before = load_checkpoint(finished_pfvit)["model"]
    after = load_checkpoint(ckpt)["model"]
    assert set(after) - set(before) == {k for k in after if k.startswith("editor.")}
    # Everything but the editor is the PF-ViT stage's, to the bit (batch-norm statistics included).
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert float(after["editor.out.weight"].abs().sum()) > 0  # it moved from its zero start
    model, payload = model_from_checkpoint(ckpt)
    assert payload["stage"] == "editor" and model.config.poker_mode == "editor"
    logs = [line for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"summary"' not in line]
    assert len(logs) == 6
    # Critic and identity term off (their default): no critic, no optimizer of its own, no new terms.
    assert "discriminator" not in payload and set(payload["optimizers"]) == set(payload["schedulers"]) == {"main"}
    assert set(json.loads(logs[0])) == {"stage", "epoch", "step", "lr", "poker_sup", "sparsity", "cyc_neutral", "total"}

    # Resuming from the first epoch's checkpoint ends where the uninterrupted run ends.
    resumed = _editor_run(tmp_path / "b", finished_pfvit, epochs=2, resume=str(tmp_path / "a" / "checkpoint-0001.pt"))
    assert all(torch.equal(after[k], load_checkpoint(resumed)["model"][k]) for k in after)


def test_the_editor_stage_starts_from_a_luma_edit_model(tmp_path: Path) -> None:
    """A PF-ViT saved with poker_luma=True ("edit" mode) still gets an editor: the stage's
    architecture turns the generator's luma switch off with the mode."""
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS), poker_mode="edit", poker_luma=True))
    init = save_checkpoint(tmp_path / "luma.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    ckpt = _editor_run(tmp_path / "run", init, epochs=1)
    config = model_from_checkpoint(ckpt)[0].config
    assert config.poker_mode == "editor" and not config.poker_luma


def test_the_editor_stage_needs_a_finished_model(tmp_path: Path, finished_pfvit: Path) -> None:
    with pytest.raises(ValueError, match="init"):
        run_editor(EditorConfig(out_dir=str(tmp_path), device="cpu"), tiny_faces(4))
    # An architecture without the editor has nothing for the stage to train.
    with pytest.raises(ValueError, match="poker_mode='editor'"):
        run_editor(
            EditorConfig(
                out_dir=str(tmp_path),
                init=str(finished_pfvit),
                arch="poker_mode=edit",
                device="cpu",
                threads=2,
                progress=False,
            ),
            tiny_faces(4),
        )


def test_an_editor_model_exports_and_its_poker_graph_skips_the_generator(finished_pfvit: Path, tmp_path: Path) -> None:
    ckpt = _editor_run(tmp_path / "run", finished_pfvit, epochs=1)
    ds = tiny_faces(5)
    images = torch.stack([ds[i]["image"] for i in range(5)])
    result = export_checkpoint(ckpt, tmp_path / "model", images, name="editor-test")
    assert result["parity"]["poker_face_mean_abs_diff"] <= 1e-5
    card = load_card(tmp_path / "model")
    assert card.training["recipe"]["model_config"]["poker_mode"] == "editor"
    assert card.extra["params_editor"] > 0
    poker = onnx.load(str(verify_files(card, tmp_path / "model")["poker_face"]))
    names = {t.name for t in poker.graph.initializer}
    assert not any("generator" in n for n in names)
    assert any("editor" in n for n in names)
    with pytest.raises(ValueError, match="poker_luma"):
        export_checkpoint(ckpt, tmp_path / "luma", images, poker_luma=True)


# ----------------------------------------------------------------------------- the critic
def _stage_batch(
    labels: list[int], has_poker: list[bool], labelled: list[bool] | None = None, seed: int = 0
) -> StageBatch:
    """A batch of ``len(labels)`` items of TINY_LABELS' classes, in model space."""
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g)
    mask = torch.tensor(labelled if labelled is not None else [True] * n).float()
    targets = torch.nn.functional.one_hot(torch.tensor(labels), len(TINY_LABELS)).float() * mask[:, None]
    return StageBatch(images, targets, mask, images.clone(), torch.tensor(has_poker).float())


def test_the_critic_reads_neutral_photos_as_real_and_expressive_photos_poker_faces_as_fake() -> None:
    neutral = TINY_LABELS.index("neutral")
    #          photo:  neutral, happy, neutral, sad, | rendered: neutral, happy | unlabelled photo
    labels = [neutral, 0, neutral, 1, neutral, 0, 0]
    has_poker = [False, False, False, False, True, True, False]
    batch = _stage_batch(labels, has_poker, labelled=[True] * 6 + [False])
    sets = critic_sets(batch, neutral)
    assert sets.real.tolist() == [1, 0, 1, 0, 0, 0, 0]
    assert sets.fake.tolist() == [0, 1, 0, 1, 0, 0, 0]
    # FERPlus-style vote distributions: the majority class decides.
    votes = torch.tensor([[0.3, 0.1, 0.6], [0.7, 0.0, 0.3]])
    soft = StageBatch(batch.images[:2], votes, torch.ones(2), batch.images[:2], torch.zeros(2))
    assert critic_sets(soft, neutral).real.tolist() == [1, 0] and critic_sets(soft, neutral).fake.tolist() == [0, 1]

    # The critic's loss moves with the real set's images and the fake set's poker faces only.
    model = _editor_model()
    torch.manual_seed(1)
    critic = EditorCritic(
        model, PatchDiscriminator(3, 8), EditorConfig(r1_gamma=1.0, r1_every=1), neutral, setup("cpu", 2)
    )
    poker = torch.randn_like(batch.images)
    loss, terms = critic.discriminator_loss(batch.images, poker, sets, step=0)
    others = 1 - sets.real - sets.fake  # [N] neither real nor fake
    for images, pokers in (
        (batch.images + 3 * others.view(-1, 1, 1, 1), poker),  # outsiders' images
        (batch.images + 3 * sets.fake.view(-1, 1, 1, 1), poker),  # the fakes' own images
        (batch.images, poker + 3 * (1 - sets.fake).view(-1, 1, 1, 1)),
    ):  # others' poker faces
        again, again_terms = critic.discriminator_loss(images, pokers, sets, step=0)
        assert float(again.detach()) == pytest.approx(float(loss.detach()), abs=1e-6)
        assert float(again_terms["r1"]) == pytest.approx(float(terms["r1"]), abs=1e-6)
    moved_real, _ = critic.discriminator_loss(batch.images + 3 * sets.real.view(-1, 1, 1, 1), poker, sets, step=0)
    moved_fake, _ = critic.discriminator_loss(batch.images, poker + 3 * sets.fake.view(-1, 1, 1, 1), sets, step=0)
    for moved in (moved_real, moved_fake):
        assert abs(float(moved.detach()) - float(loss.detach())) > 1e-4
    # The editor's term reads the fakes' poker faces, and gives the critic no gradient.
    poker.requires_grad_(True)
    adv = critic.generator_loss(poker, sets)
    adv.backward()
    assert float(poker.grad[sets.fake == 0].abs().sum()) == 0.0 < float(poker.grad[sets.fake == 1].abs().sum())
    assert all(p.grad is None for p in critic.discriminator.parameters())


def test_the_patch_critic_takes_any_size() -> None:
    critic = PatchDiscriminator(1, 8)
    assert critic(torch.randn(2, 1, 48, 48)).shape == (2, 144)
    assert critic(torch.randn(2, 1, 32, 32)).shape == (2, 64)
    pooled = PatchDiscriminator(1, 8, pool=True)
    pooled.load_state_dict(critic.state_dict())
    faces = torch.randn(2, 1, 48, 48)
    assert torch.allclose(pooled(faces), critic(faces).mean(dim=1, keepdim=True))


def test_the_face_critic_gives_one_verdict_that_reads_the_whole_face() -> None:
    """``d_arch="face"``: one logit per face, for any size, and a change at any place of the
    face (a corner, the centre) moves it, as a patch's logit cannot for pixels outside its patch."""
    model = _editor_model(greyscale=True)
    critic = build_critic(model, EditorConfig(d_arch="face", d_width=8))
    assert isinstance(critic, FaceDiscriminator)
    assert isinstance(build_critic(model, EditorConfig(d_width=8)), PatchDiscriminator)
    with pytest.raises(ValueError, match="d_pool"):  # one verdict already: nothing to average
        EditorConfig(d_arch="face", d_pool=True)
    torch.manual_seed(0)
    faces = torch.randn(2, 1, 48, 48)
    assert critic(faces).shape == (2, 1) and critic(torch.randn(3, 1, 32, 32)).shape == (3, 1)
    faces.requires_grad_(True)
    critic(faces)[0].sum().backward()
    grad = faces.grad[0, 0].abs()
    assert float(grad[:4, :4].sum()) > 0 and float(grad[22:26, 22:26].sum()) > 0 and float(grad[44:, 44:].sum()) > 0
    assert float(faces.grad[1].abs().sum()) == 0.0  # one face's verdict reads that face alone


def test_with_the_critic_and_identity_off_the_loss_is_the_three_terms() -> None:
    """adv=0 and identity=0 (the defaults): the objective's terms and total are the ones the
    stage had before either existed, to the bit."""
    model = _editor_model()
    _kick(model)
    model.requires_grad_(False)
    batch = _stage_batch([2, 0, 1, 2, 0, 1], [True, False, False, True, False, False])
    cfg = EditorConfig()
    loss = EditorObjective(model, cfg, TINY_LABELS.index("neutral"))(batch)
    assert list(loss.terms) == ["poker_sup", "sparsity", "cyc_neutral"]
    t = loss.terms
    assert torch.equal(
        loss.total,
        0 + cfg.poker_sup * t["poker_sup"] + cfg.sparsity * t["sparsity"] + cfg.cyc_neutral * t["cyc_neutral"],
    )
    # The identity term counts photographs only, and a fresh editor keeps the residue exactly.
    with_identity = EditorObjective(model, replace(cfg, identity=1.0), TINY_LABELS.index("neutral"))
    assert float(with_identity(batch).terms["identity"]) > 0
    keep = batch.has_poker > 0
    rendered = StageBatch(
        *(t[keep] for t in (batch.images, batch.targets, batch.labelled, batch.true_poker, batch.has_poker))
    )
    assert float(with_identity(rendered).terms["identity"]) == 0.0
    fresh = _editor_model()
    fresh.requires_grad_(False)
    assert (
        float(EditorObjective(fresh, replace(cfg, identity=1.0), TINY_LABELS.index("neutral"))(batch).terms["identity"])
        == 0.0
    )


def _photos_and_rendered() -> JointFaces:
    """Twelve photographs (a third neutral) and eight rendered faces with true poker faces."""
    return JointFaces(tiny_faces(12), tiny_faces(8, seed=1))


def _finished_pfvit(tmp_path: Path) -> Path:
    """A PF-ViT stage checkpoint (a fresh micro model, seed 0) for the editor stage to start from."""
    torch.manual_seed(0)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS)))
    return save_checkpoint(tmp_path / "init.pt", TrainState(model), "train", TrainConfig())


def _adversarial_config(out: Path, init: Path, **changes) -> EditorConfig:
    """A two-step-per-epoch editor stage with a small critic, on the CPU."""
    base = dict(batch_size=4, max_steps_per_epoch=2, device="cpu", threads=2, progress=False, adv=0.5, d_width=8)
    return EditorConfig(out_dir=str(out), init=str(init), **{**base, **changes})


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"summary"' not in line]


@pytest.mark.parametrize("d_arch", ["patch", "face"])
def test_the_adversarial_editor_stage_keeps_its_critic_apart_and_resumes_exactly(tmp_path: Path, d_arch: str) -> None:
    init = _finished_pfvit(tmp_path)
    cfg = _adversarial_config(
        tmp_path / "full",
        init,
        epochs=2,
        save_every=1,
        identity=0.5,
        d_steps=2,
        r1_gamma=1.0,
        r1_every=3,
        poker_translate=0.1,
        poker_scale=(1.0, 1.25),
        d_arch=d_arch,
        d_warmup=1,
    )
    result = run_editor(cfg, _photos_and_rendered())
    payload = load_checkpoint(result.checkpoint)
    assert not any(k.startswith(("discriminator", "critic", "layers")) for k in payload["model"])
    assert payload["discriminator"].keys() == result.discriminator.state_dict().keys()
    assert set(payload["optimizers"]) == set(payload["schedulers"]) == {"main", "disc"}
    full = _log(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert {"poker_sup", "sparsity", "cyc_neutral", "identity", "d", "total"} <= set(full[0]) and "adv" not in full[0]
    assert {"poker_sup", "sparsity", "cyc_neutral", "identity", "adv", "d", "total"} <= set(full[1])
    assert any("r1" in r for r in full)  # lazy R1 ran on some critic steps

    resume = str(tmp_path / "full" / "checkpoint-0001.pt")
    run_editor(replace(cfg, out_dir=str(tmp_path / "resumed"), resume=resume), _photos_and_rendered())
    resumed = _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [3, 4]
    for got, want in zip(resumed, full[2:]):
        for name in ("total", "adv", "identity", "d"):
            assert got[name] == pytest.approx(want[name], abs=1e-6)
    again = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(payload["discriminator"][k], again["discriminator"][k]) for k in payload["discriminator"])


def test_the_stage_can_go_on_from_a_finished_editor_with_the_critic_warmed_up_first(tmp_path: Path) -> None:
    """``editor_init`` starts the editor from another run's editor; during the first ``d_warmup``
    steps only the critic learns, on that editor's poker faces."""
    init = _finished_pfvit(tmp_path)
    finished = _editor_model()
    _kick(finished)
    editor_ckpt = save_checkpoint(tmp_path / "editor.pt", TrainState(finished), "editor", EditorConfig(init="x"))
    cfg = _adversarial_config(
        tmp_path / "warm", init, editor_init=str(editor_ckpt), epochs=1, max_steps_per_epoch=3, d_warmup=3
    )
    warm = run_editor(cfg, _photos_and_rendered())
    assert all(torch.equal(a, b) for a, b in zip(warm.model.editor.parameters(), finished.editor.parameters()))
    critic_steps = load_checkpoint(warm.checkpoint)["optimizers"]["disc"]["state"][0]["step"]
    assert int(critic_steps) == 3  # the critic took every step
    assert all("d" in r and "adv" not in r for r in _log(tmp_path / "warm"))
    # After the warm-up the game starts: the editor moves away from where it started.
    played = run_editor(replace(cfg, out_dir=str(tmp_path / "played"), d_warmup=1), _photos_and_rendered())
    assert not all(torch.equal(a, b) for a, b in zip(played.model.editor.parameters(), finished.editor.parameters()))
    assert ["adv" in r for r in _log(tmp_path / "played")] == [False, True, True]
    for bad in (dict(d_warmup=2), dict(adv=0.5, d_warmup=-1)):  # no critic to warm up; a negative count
        with pytest.raises(ValueError, match="d_warmup"):
            EditorConfig(**bad)
    with pytest.raises(ValueError, match="no editor"):
        run_editor(replace(cfg, out_dir=str(tmp_path / "none"), editor_init=str(init)), _photos_and_rendered())


def test_a_rendered_face_and_its_poker_face_move_together_and_photos_stay() -> None:
    """The editor stage's geometry: each item with a true poker face gets one random shift and
    zoom, the same for both images, so the true change moves with the face; photographs are
    left to the bit (their own augmentation moved them already)."""
    n, size = 6, 32
    images = torch.rand(n, 3, size, size)
    true_poker = images.clone()
    true_poker[:, :, 20:23, 10:22] -= 0.5  # the expression: a mark at one place of the face
    has_poker = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    batch = StageBatch(images, torch.zeros(n, 2), torch.ones(n), true_poker, has_poker)
    torch.manual_seed(3)
    moved = jitter_poker_pairs(batch, translate=0.15, scale=(1.0, 1.25))
    photos = has_poker == 0
    assert torch.equal(moved.images[photos], images[photos]) and torch.equal(
        moved.true_poker[photos], true_poker[photos]
    )
    rows = (moved.images - moved.true_poker).abs().mean(dim=(1, 3))  # [N, H]: where the mark now is
    centres = (rows * torch.arange(size)).sum(1) / rows.sum(1)
    assert not torch.allclose(moved.images[~photos], images[~photos])
    assert float(centres[~photos].std()) > 0.5  # the mark is no longer at one row
    torch.manual_seed(3)
    again = jitter_poker_pairs(batch, translate=0.15, scale=(1.0, 1.25))
    assert torch.equal(again.images, moved.images)  # drawn from the global RNG the checkpoint keeps
    assert jitter_poker_pairs(batch, 0.0, (1.0, 1.0)) is batch
