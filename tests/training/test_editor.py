"""The expression editor ("editor" poker mode) and the editor stage: a fresh editor changes
nothing, a grey model's change is a luma change, the stage trains the editor and nothing else
and resumes exactly, its terms count the right items, and the export serves its poker faces."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from service.card import load_card, verify_files
from tests.training.conftest import TINY_LABELS, micro_arch, micro_overrides, tiny_faces
from training.adversarial import prepare_batch
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import EditorConfig, PFViTConfig, TrainConfig
from training.editing import EditorObjective
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

    # Resuming from the first epoch's checkpoint ends where the uninterrupted run ends.
    resumed = _editor_run(tmp_path / "b", finished_pfvit, epochs=2, resume=str(tmp_path / "a" / "checkpoint-0001.pt"))
    assert all(torch.equal(after[k], load_checkpoint(resumed)["model"][k]) for k in after)


def test_the_editor_stage_starts_from_a_luma_edit_model(tmp_path: Path) -> None:
    """A PF-ViT saved with poker_luma=True ("edit" mode) still gets an editor: the stage's
    architecture turns the generator's luma switch off with the mode."""
    from training.checkpoint import TrainState, save_checkpoint

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
