"""Two-process DDP smoke test on CPU (gloo over loopback), bounded in time: the PF-ViT stage,
then the editor stage on its checkpoint."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.conftest import micro_overrides, tiny_faces

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
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
    from training.checkpoint import TrainState, save_checkpoint
    from training.config import EditorConfig, PFViTConfig, PretrainConfig, TrainConfig
    from training.engine import run_editor, run_train
    from training.model import PFViT

    init = Path(out_dir) / "init.pt"
    if rank == 0:
        torch.manual_seed(0)
        model = PFViT(PFViTConfig(**micro_overrides()))
        save_checkpoint(init, TrainState(model), "pretrain", PretrainConfig())
    else:
        while not init.exists():
            time.sleep(0.05)
    cfg = TrainConfig(
        out_dir=out_dir,
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
    try:
        result = run_train(cfg, tiny_faces(8))
        flat = torch.cat(
            [p.detach().flatten() for p in [*result.model.parameters(), *result.discriminator.parameters()]]
        )
        torch.save(flat, Path(out_dir) / f"params-{rank}.pt")
        # The editor stage on the finished model: only the editor trains, and under DDP too.
        editor = run_editor(
            EditorConfig(
                out_dir=str(Path(out_dir) / "editor"),
                init=str(Path(out_dir) / "last.pt"),
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
        torch.save(editor.model.editor.state_dict(), Path(out_dir) / f"editor-{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"DDP smoke test did not finish in {TIMEOUT_S} s")
    p0, p1 = torch.load(tmp_path / "params-0.pt"), torch.load(tmp_path / "params-1.pt")
    assert torch.equal(p0, p1)  # gradients were averaged, so both replicas (model and D) took the same steps
    assert (tmp_path / "last.pt").is_file()
    steps = [line for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"summary"' not in line]
    assert len(steps) == 2  # rank 0 alone logs
    e0, e1 = torch.load(tmp_path / "editor-0.pt"), torch.load(tmp_path / "editor-1.pt")
    assert all(torch.equal(e0[k], e1[k]) for k in e0)  # the editor's replicas took the same steps
    assert float(e0["out.weight"].abs().sum()) > 0  # and moved from their zero start
