"""Two-process DDP smoke tests on CPU (gloo over loopback), bounded in time: the PF-ViT stage,
then the editor stage on its checkpoint; the editor stage with its critic."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.conftest import TINY_LABELS, micro_overrides, tiny_faces

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str, body) -> None:
    """One process: join the gloo group on loopback, run ``body(rank, out_dir)``, leave."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME="lo",
    )
    from training import distributed

    try:
        body(rank, Path(out_dir))
    finally:
        distributed.cleanup()


def _spawn(body, tmp_path: Path) -> None:
    """Run ``body(rank, tmp_path)`` in two processes, within TIMEOUT_S."""
    ctx = mp.start_processes(
        _rank_main, args=(2, _free_port(), str(tmp_path), body), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"DDP smoke test did not finish in {TIMEOUT_S} s")


def _shared_init(rank: int, path: Path, labels: list[str], stage: str) -> Path:
    """Rank 0 writes a fresh micro PF-ViT checkpoint at ``path``; the others wait for it."""
    from training.checkpoint import TrainState, save_checkpoint
    from training.config import PFViTConfig, PretrainConfig
    from training.model import PFViT

    if rank == 0:
        torch.manual_seed(0)
        save_checkpoint(
            path, TrainState(PFViT(PFViTConfig(**micro_overrides(), labels=labels))), stage, PretrainConfig()
        )
    else:
        while not path.exists():
            time.sleep(0.05)
    return path


def _save_flat(parameters, path: Path) -> None:
    torch.save(torch.cat([p.detach().flatten() for p in parameters]), path)


def _steps(folder: Path) -> list[dict]:
    """The per-step records of a run's log (rank 0 alone writes it)."""
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if '"summary"' not in line]


def _pfvit_then_editor(rank: int, out: Path) -> None:
    from training.config import EditorConfig, TrainConfig
    from training.engine import run_editor, run_train

    init = _shared_init(rank, out / "init.pt", [], "pretrain")
    cfg = TrainConfig(
        out_dir=str(out),
        init=str(init),
        epochs=1,
        batch_size=2,
        warmup_epochs=0.5,
        max_steps_per_epoch=2,
        threads=1,
        device="cpu",
        progress=False,
        eval_every=0,
    )
    result = run_train(cfg, tiny_faces(8))
    _save_flat([*result.model.parameters(), *result.discriminator.parameters()], out / f"params-{rank}.pt")
    # The editor stage on the finished model: only the editor trains, and under DDP too.
    editor = run_editor(
        EditorConfig(
            out_dir=str(out / "editor"),
            init=str(out / "last.pt"),
            epochs=1,
            batch_size=2,
            warmup_epochs=0.5,
            max_steps_per_epoch=2,
            threads=1,
            device="cpu",
            progress=False,
        ),
        tiny_faces(8),
    )
    torch.save(editor.model.editor.state_dict(), out / f"editor-{rank}.pt")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    _spawn(_pfvit_then_editor, tmp_path)
    p0, p1 = torch.load(tmp_path / "params-0.pt"), torch.load(tmp_path / "params-1.pt")
    assert torch.equal(p0, p1)  # gradients were averaged, so both replicas (model and D) took the same steps
    assert (tmp_path / "last.pt").is_file()
    assert len(_steps(tmp_path)) == 2  # rank 0 alone logs
    e0, e1 = torch.load(tmp_path / "editor-0.pt"), torch.load(tmp_path / "editor-1.pt")
    assert all(torch.equal(e0[k], e1[k]) for k in e0)  # the editor's replicas took the same steps
    assert float(e0["out.weight"].abs().sum()) > 0  # and moved from their zero start


def _adversarial_editor(rank: int, out: Path) -> None:
    from training.config import EditorConfig
    from training.data.joint import JointFaces
    from training.engine import run_editor

    init = _shared_init(rank, out / "init.pt", list(TINY_LABELS), "train")
    cfg = EditorConfig(
        out_dir=str(out / "editor"),
        init=str(init),
        epochs=1,
        batch_size=3,
        warmup_epochs=0.5,
        max_steps_per_epoch=2,
        threads=1,
        device="cpu",
        progress=False,
        adv=0.5,
        identity=0.5,
        d_steps=2,
        d_width=8,
        r1_gamma=1.0,
        r1_every=2,
        d_arch=(out / "d_arch").read_text(),  # type: ignore[arg-type]
        d_warmup=1,  # the first step trains the critic alone
    )
    result = run_editor(cfg, JointFaces(tiny_faces(12), tiny_faces(4, seed=1)))
    _save_flat([*result.model.editor.parameters(), *result.discriminator.parameters()], out / f"critic-{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("d_arch", ["patch", "face"])
def test_two_process_ddp_adversarial_editor_on_cpu(tmp_path: Path, d_arch: str) -> None:
    """The editor stage with its critic (either kind) under DDP, a step of the critic's warm-up
    first: editor and critic replicas take the same steps."""
    (tmp_path / "d_arch").write_text(d_arch)
    _spawn(_adversarial_editor, tmp_path)
    assert torch.equal(torch.load(tmp_path / "critic-0.pt"), torch.load(tmp_path / "critic-1.pt"))
    steps = _steps(tmp_path / "editor")
    assert len(steps) == 2 and all({"d", "identity"} <= set(r) for r in steps)
    assert ["adv" in r for r in steps] == [False, True]
    assert "discriminator" in torch.load(tmp_path / "editor" / "last.pt", weights_only=True)
