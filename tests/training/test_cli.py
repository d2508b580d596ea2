"""The console scripts as a user runs them: every ``pfvit-*`` command answers ``--help``, and a
tiny run on generated data goes pretrain -> train -> evaluate -> export through the real
commands, ending with the exported model served by the service's own ONNX Runtime code on a
real photo aligned by ``pfvit-align-dataset``; that photo also checks that the service's
preprocessing is the model's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.card import load_card, verify_files
from service.models import EmotionModel
from service.runtime import CPU
from service.vision.align import normalise
from tests.training.conftest import micro_arch
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.data import DataSpec
from training.data.transforms import FaceTransform

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMMANDS = (
    "pfvit-pretrain",
    "pfvit-train",
    "pfvit-train-editor",
    "pfvit-evaluate",
    "pfvit-export",
    "pfvit-align-dataset",
)
ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"
MTCNN_DIR = REPO / "models" / "mtcnn"
TIMEOUT_S = 300


def _run(command: str, *args: str) -> subprocess.CompletedProcess:
    exe = BIN / command
    assert exe.is_file(), f"{command} is not installed in {BIN} (pip install -e .)"
    # This checkout's code, whatever the environment was installed from.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{command} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command: str) -> None:
    out = _run(command, "--help").stdout
    assert out.startswith(f"usage: {command}")
    if command not in ("pfvit-align-dataset",):
        assert "--data" in out or "--checkpoint" in out
    if "--data DATA" in out:  # a command that reads a data spec names every kind it may take
        from training.data.spec import DATA_KINDS

        kinds = out.split("data kinds (--data", 1)[1]
        assert all(f"\n  {kind} " in kinds for kind in DATA_KINDS) and "affectnet7" in kinds


def test_the_editor_command_needs_its_data_and_a_finished_model() -> None:
    for args in (["--data", "synthetic:n=8"], ["--init", "runs/train/last.pt"]):
        proc = subprocess.run(
            [str(BIN / "pfvit-train-editor"), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=TIMEOUT_S,
        )
        assert proc.returncode != 0
        assert "--data and --init" in proc.stderr


def test_the_editor_command_takes_its_critic_settings() -> None:
    from training.cli import parse_config
    from training.config import EditorConfig

    flags = (
        "--adv",
        "--gan",
        "--r1-gamma",
        "--r1-every",
        "--d-blr",
        "--d-betas",
        "--d-steps",
        "--d-width",
        "--identity",
    )
    out = _run("pfvit-train-editor", "--help").stdout
    assert all(flag in out for flag in flags)
    cfg = parse_config(
        EditorConfig,
        "pfvit-train-editor",
        "",
        [
            "--adv",
            "0.1",
            "--gan",
            "nonsat",
            "--r1-gamma",
            "2",
            "--r1-every",
            "3",
            "--d-blr",
            "1e-4",
            "--d-betas",
            "0",
            "0.99",
            "--d-steps",
            "2",
            "--d-width",
            "16",
            "--identity",
            "0.3",
        ],
    )
    assert (
        cfg.adv,
        cfg.gan,
        cfg.r1_gamma,
        cfg.r1_every,
        cfg.d_blr,
        cfg.d_betas,
        cfg.d_steps,
        cfg.d_width,
        cfg.identity,
    ) == (0.1, "nonsat", 2.0, 3, 1e-4, (0.0, 0.99), 2, 16, 0.3)
    with pytest.raises(ValueError, match="d_steps"):
        EditorConfig(d_steps=0)


def test_a_bad_data_spec_is_a_usage_error_that_lists_the_kinds() -> None:
    proc = subprocess.run(
        [str(BIN / "pfvit-train"), "--data", "imagenet:/x"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 2
    assert "affectnet7" in proc.stderr and "rendered" in proc.stderr


@pytest.fixture(scope="module")
def aligned_photo(tmp_path_factory) -> np.ndarray:
    """tests/fixtures/astronaut.png aligned to 32 px by ``pfvit-align-dataset`` (the service's detector and aligner)."""
    if not (MTCNN_DIR / "card.json").is_file():
        pytest.fail("models/mtcnn is missing: the repository ships it")
    root = tmp_path_factory.mktemp("photo")
    (root / "raw").mkdir()
    shutil.copy(ASTRONAUT, root / "raw" / "astronaut.png")
    _run("pfvit-align-dataset", str(root / "raw"), str(root / "aligned"), "--size", "32")
    face = np.array(Image.open(root / "aligned" / "astronaut.png").convert("RGB"))
    assert face.shape == (32, 32, 3) and face.std() > 20
    return face


def test_pipeline_through_the_commands(tmp_path: Path, aligned_photo: np.ndarray) -> None:
    data = "synthetic:n=16"
    common = ["--data", data, "--threads", "1", "--no-progress", "--batch-size", "8", "--warmup-epochs", "0.5"]
    pre = json.loads(
        _run("pfvit-pretrain", *common, "--arch", micro_arch(), "--out-dir", str(tmp_path / "pre"), "--epochs", "1")
        .stdout.strip()
        .splitlines()[-1]
    )
    train = json.loads(
        _run(
            "pfvit-train",
            *common,
            "--init",
            pre["checkpoint"],
            "--arch",
            "poker_mode=edit",
            "--sampler",
            "balanced",
            "--out-dir",
            str(tmp_path / "train"),
            "--epochs",
            "1",
            "--mixup-alpha",
            "0.2",
            "--gan",
            "nonsat",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    payload = load_checkpoint(train["checkpoint"])
    assert payload["model_config"]["poker_mode"] == "edit" and payload["model_config"]["image_size"] == 32
    assert payload["stage_config"]["sampler"] == "balanced" and payload["stage_config"]["gan"] == "nonsat"
    assert DataSpec.parse(payload["stage_config"]["data"]) == DataSpec.parse(data)
    assert 0.0 <= train["val_accuracy"] <= 1.0

    editor = json.loads(
        _run(
            "pfvit-train-editor",
            *common,
            "--init",
            train["checkpoint"],
            "--poker-data",
            "synthetic:n=8",
            "--poker-repeat",
            "2",
            "--out-dir",
            str(tmp_path / "editor"),
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "2",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    payload = load_checkpoint(editor["checkpoint"])
    assert payload["stage"] == "editor" and payload["model_config"]["poker_mode"] == "editor" and payload["step"] == 2
    assert DataSpec.parse(payload["stage_config"]["poker_data"]) == DataSpec.parse("synthetic:n=8")
    assert {"poker_sup", "cyc_neutral", "sparsity"} <= set(editor["last"])

    evaluation = json.loads(
        _run(
            "pfvit-evaluate",
            "--checkpoint",
            train["checkpoint"],
            "--data",
            data,
            "--split",
            "test",
            "--out-dir",
            str(tmp_path / "eval"),
            "--threads",
            "1",
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert evaluation["num_samples"] == 8
    model_dir = tmp_path / "model"
    exported = json.loads(
        _run(
            "pfvit-export",
            "--checkpoint",
            train["checkpoint"],
            "--out-dir",
            str(model_dir),
            "--data",
            data,
            "--metrics",
            str(tmp_path / "eval" / "metrics.json"),
            "--name",
            "cli-test",
        ).stdout.strip()
    )
    assert exported["parity"]["logits_max_abs_diff"] <= 1e-4

    # The exported model, served by the service's code on the aligned photo, agrees with torch.
    card = load_card(model_dir)
    verify_files(card, model_dir)
    assert card.training["data"] == data and card.training["metrics"]["num_samples"] == 8
    served = EmotionModel.from_dir(model_dir, providers=[CPU])
    model, _ = model_from_checkpoint(train["checkpoint"])
    x = torch.from_numpy(aligned_photo).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        want = model(model.normalise(x)).numpy()
    got = served.recognise(aligned_photo[None]).logits
    assert np.abs(got - want).max() <= 1e-4 and served.labels == model.config.labels
    assert served.poker_faces(aligned_photo[None]).shape == (1, 32, 32, 3)


def test_the_service_preprocesses_as_the_model_does(aligned_photo: np.ndarray) -> None:
    from training.sizes import pfvit_micro

    model = pfvit_micro(image_size=32)
    x = FaceTransform(image_size=32, augment=False)(aligned_photo)[None]  # training's path: (1, 3, H, W) in [0, 1]
    assert torch.equal(x, torch.from_numpy(aligned_photo).permute(2, 0, 1)[None].float() / 255.0)
    want = model.normalise(x).numpy()
    got = normalise(aligned_photo[None], tuple(model.config.mean), tuple(model.config.std))  # the service's
    assert got.shape == want.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
