"""Checkpoints: plain data only, so ``torch.load(weights_only=True)`` reads them.

A checkpoint holds the model config as a dict (the file alone rebuilds the model), the stage
config, the *unwrapped* state dicts of the model (E, S, G, H), of the discriminator (separately,
under ``"discriminator"``: D of the PF-ViT stage or the editor stage's critic; only resuming
needs it), of optimizers and
schedulers, step and epoch, and the RNG states of every rank, so a resumed run takes exactly
the steps it would have taken.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.config import PFViTConfig
from training.model import PFViT


@dataclass
class TrainState:
    """Everything a run advances and a checkpoint must restore.

    Attributes:
        model: the PF-ViT (E, S, G, H), unwrapped.
        optimizers, schedulers: by name ("main"; "disc" for the discriminator).
        discriminator: D of the PF-ViT stage, or the editor stage's critic; None otherwise.
        step: optimizer steps taken so far.
        epoch: epochs completed (while an epoch runs: its index).
    """

    model: PFViT
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    discriminator: nn.Module | None = None
    step: int = 0
    epoch: int = 0


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / objective wrappers (never save the wrapper)."""
    while hasattr(module, "module"):
        module = module.module
    return module


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, cuda) as checkpoint-safe data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    state: TrainState,
    stage: str,
    stage_config: Any,
    rng_states: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file, then rename) so a crash never leaves half a file.

    Args:
        path: destination file.
        state: model, discriminator, optimizers, schedulers, step and epochs completed.
        stage: "pretrain" or "train".
        stage_config: the stage's dataclass config (stored as a dict).
        rng_states: one RNG state per rank, in rank order (default: this process's).
        extra: anything else plain (e.g. the last metrics).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "pfvit-checkpoint/1",
        "stage": stage,
        "model_config": state.model.config.to_dict(),
        "stage_config": asdict(stage_config) if is_dataclass(stage_config) else dict(stage_config),
        "model": unwrap(state.model).state_dict(),
        "optimizers": {k: v.state_dict() for k, v in state.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in state.schedulers.items()},
        "step": state.step,
        "epoch": state.epoch,
        "rng": rng_states if rng_states is not None else [rng_state()],
        "extra": extra or {},
    }
    if state.discriminator is not None:
        payload["discriminator"] = unwrap(state.discriminator).state_dict()
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (weights-only unpickling: plain data and tensors, nothing executable)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def model_from_checkpoint(
    path_or_payload: str | Path | dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[PFViT, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone. Returns ``(model in eval mode, payload)``."""
    payload = path_or_payload if isinstance(path_or_payload, dict) else load_checkpoint(path_or_payload, map_location)
    model = PFViT(PFViTConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["model"])
    return model.eval(), payload
