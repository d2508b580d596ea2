"""tools/probe_classifier.py runs end to end on stand-in data and reports one line per epoch."""

import json

import pytest

pytest.importorskip("torch")

from tools import probe_classifier


def test_probe_reports_each_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", "synthetic:n=32", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    assert probe_classifier.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0.0 <= line["val_accuracy"] <= 1.0 and line["stem"] == "conv" for line in lines)


def test_poker_face_probe_reports_the_change(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.training.conftest import micro_arch, tiny_faces
    from tools import probe_poker_face
    from training.config import PretrainConfig
    from training.engine import run_pretrain

    run_pretrain(
        PretrainConfig(
            out_dir=str(tmp_path / "mae"),
            arch=micro_arch(),
            epochs=1,
            batch_size=8,
            threads=1,
            progress=False,
            device="cpu",
        ),
        tiny_faces(16),
    )
    argv = [
        "--init",
        str(tmp_path / "mae" / "last.pt"),
        "--loss",
        "l2",
        "--steps",
        "2",
        "--train-n",
        "16",
        "--test-n",
        "16",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--workers",
        "1",
    ]
    assert probe_poker_face.main(argv) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["loss"] == "l2" and line["steps"] == 2
    assert -1.0 <= line["change_cosine"] <= 1.0 and line["true_mean_change"] > 0 and line["mean_change"] >= 0


def test_mirror_gain_reports_both_readings(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.training.conftest import TINY_LABELS, micro_overrides
    from tools import mirror_gain
    from training.checkpoint import TrainState, save_checkpoint
    from training.config import PFViTConfig, TrainConfig
    from training.model import PFViT

    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS)))
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    assert (
        mirror_gain.main(["--checkpoint", str(ckpt), "--data", "synthetic:n=12", "--splits", "val", "--threads", "1"])
        == 0
    )
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["split"] == "val" and line["faces"] > 0
    assert 0.0 <= line["accuracy"] <= 1.0 and 0.0 <= line["mirror_average_accuracy"] <= 1.0


def test_editor_probe_reports_both_kinds_of_face(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.training.conftest import micro_overrides
    from tests.training.test_ferplus_recipe import stand_in_ferplus
    from tools import probe_editor
    from training.checkpoint import TrainState, save_checkpoint
    from training.config import PFViTConfig, TrainConfig
    from training.data.ferplus import FERPLUS_LABELS
    from training.judge import JudgeCNN, JudgeResult, save_judge
    from training.model import PFViT

    stand_in_ferplus(tmp_path / "ferplus", per_class=6)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(FERPLUS_LABELS), greyscale=True))
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    judge = save_judge(
        JudgeResult(JudgeCNN(len(FERPLUS_LABELS)).eval(), list(FERPLUS_LABELS), 0.0, 0.0), tmp_path / "judge.pt"
    )
    argv = [
        "--init",
        str(ckpt),
        "--ferplus",
        str(tmp_path / "ferplus"),
        "--aligned",
        str(tmp_path / "ferplus" / "data"),
        "--steps",
        "2",
        "--train-n",
        "16",
        "--test-n",
        "16",
        "--batch-size",
        "8",
        "--judge",
        str(judge),
        "--threads",
        "1",
        "--workers",
        "1",
        "--set",
        "sparsity=0.1",
        "--set",
        "adv=0.2",
        "--set",
        "d_betas=0.0,0.99",
    ]
    assert probe_editor.main(argv) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["sparsity"] == 0.1 and line["adv"] == 0.2 and line["d_betas"] == [0.0, 0.99] and line["steps"] == 2
    assert -1.0 <= line["change_cosine"] <= 1.0 and line["true_mean_change"] > 0
    assert line["photo_mean_change"] >= 0 and 0.0 < line["photo_ssim_to_input"] <= 1.0
    assert line["c2st_n"] == 7  # the stand-in's neutral test faces: six and the blank one
    assert 0.0 <= line["c2st_auc"] <= 1.0 and 0.0 <= line["c2st_inputs_auc"] <= 1.0


def test_editor_probe_refuses_settings_it_owns() -> None:
    from tools import probe_editor

    assert probe_editor.editor_overrides(["gan=nonsat", "d_steps=2"]) == {"gan": "nonsat", "d_steps": 2}
    for bad in ("epochs=3", "no_such_setting=1", "adv"):
        with pytest.raises(SystemExit, match="--set"):
            probe_editor.editor_overrides([bad])


def test_critic_probe_scores_each_critic_against_both_sets(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.training.conftest import micro_overrides
    from tests.training.test_ferplus_recipe import stand_in_ferplus
    from tools import probe_critic
    from training.checkpoint import TrainState, save_checkpoint
    from training.config import EditorConfig, PFViTConfig
    from training.data.ferplus import FERPLUS_LABELS
    from training.model import PFViT

    stand_in_ferplus(tmp_path / "ferplus", per_class=6)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(FERPLUS_LABELS), greyscale=True, poker_mode="editor"))
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "editor", EditorConfig(init="x"))
    argv = ["--checkpoint", str(ckpt), "--ferplus", str(tmp_path / "ferplus"), "--aligned"]
    argv += [str(tmp_path / "ferplus" / "data"), "--steps", "3", "--n", "6", "--held-out", "2", "--threads", "1"]
    assert probe_critic.main([*argv, "--critic", "face:4", "--critic", "patch:4:pool"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["critic"], x["against"]) for x in lines] == [
        ("face:4", "poker"),
        ("face:4", "inputs"),
        ("patch:4:pool", "poker"),
        ("patch:4:pool", "inputs"),
    ]
    assert all(0.0 <= x["heldout_auc"] <= 1.0 and x["steps"] == 3 for x in lines)
    # A fresh editor changes nothing: its poker faces are the inputs, and each critic reads them so.
    for poker, inputs in (lines[:2], lines[2:]):
        assert (poker["heldout_auc"], poker["last100_loss"]) == (inputs["heldout_auc"], inputs["last100_loss"])
    for bad in ("wide:4", "patch:4:pooled"):
        with pytest.raises(SystemExit, match="--critic"):
            probe_critic.critic_config(bad, 1e-2)
    with pytest.raises(SystemExit, match="--n"):
        probe_critic.main([*argv, "--n", "8"])  # seven neutral train faces: six and the blank one
