"""Process-group setup for ``torchrun`` (environment variables) and single-process runs.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
:func:`setup` reads them, picks NCCL on CUDA and gloo on CPU, and chooses the device and the
number of CPU threads. Without those variables everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(preference: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` takes CUDA when present; ``"cuda"`` without CUDA is an error, not a silent CPU run."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if preference == "auto":
        return torch.device("cpu")
    raise ValueError(f"unknown device {preference!r}; use auto, cpu or cuda")


def setup(device: str = "auto", threads: int = 0) -> DistContext:
    """Join the process group named by the environment (idempotent) and pick the device.

    Args:
        device: "auto", "cpu" or "cuda".
        threads: CPU threads for this process; 0 shares all cores among the local processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    dev = choose_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.set_num_threads(threads if threads > 0 else max(1, (os.cpu_count() or 1) // max(1, local_world)))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over all ranks (the epoch summaries that rank 0 logs)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj`` in rank order (one-element list when not distributed)."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP over the parameters that require grad (frozen ones are left out by DDP); the module
    itself when not distributed."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
