"""Engine: the one run skeleton (:func:`run_stage`) that wires model, data, optimizers,
schedules, checkpoints, logs and evaluation together for the three stages
(``training.stages``: MAE pre-training, the PF-ViT stage and the editor stage).

Runs take a stage config and ready-made datasets (the CLI builds them), so tests call them
directly. Under ``torchrun`` the same functions run data-parallel: every process calls them,
rank 0 alone writes logs, checkpoints and evaluations.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from training import distributed
from training.adversarial import Discriminator
from training.checkpoint import TrainState, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import EditorConfig, PFViTConfig, PretrainConfig, RunConfig, TrainConfig
from training.data.sampling import BalancedSampler
from training.distributed import DistContext
from training.evaluate import evaluate
from training.model import PFViT
from training.sizes import model_config
from training.stages import EditorStage, MAEStage, PFViTStage, RunLog, Stage

__all__ = ["RunResult", "input_size", "resolve_model_config", "run_editor", "run_pretrain", "run_stage", "run_train"]


# ----------------------------------------------------------------------------- small pieces
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_sampler(dataset: Dataset, cfg: RunConfig, ctx: DistContext) -> Sampler[int]:
    """The training sampler ``cfg.sampler`` names; both orders depend only on (seed, epoch),
    also with one process, which is what makes resuming exact."""
    if cfg.sampler == "balanced":
        targets = getattr(dataset, "targets", None)
        if targets is None:
            raise ValueError(f"sampler 'balanced' needs a dataset with targets; {type(dataset).__name__} has none")
        return BalancedSampler(list(targets), len(dataset.labels), ctx.world_size, ctx.rank, cfg.seed)
    if cfg.sampler == "distributed":
        return DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    raise ValueError(f"unknown sampler {cfg.sampler!r}; use distributed or balanced")


def make_loader(dataset: Dataset, cfg: RunConfig, ctx: DistContext, train: bool) -> DataLoader:
    """Training loaders draw through :func:`make_sampler`; evaluation loaders go in order."""
    sampler = make_sampler(dataset, cfg, ctx) if train else None
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=cfg.num_workers,
        drop_last=train,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=False,
    )


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell every dataset (inside concatenations and subsets too) that has ``set_epoch`` which
    epoch runs, so per-epoch augmentation draws differ. Loader workers are started anew each
    epoch, so they see it."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    for child in getattr(dataset, "datasets", ()):  # ConcatDataset
        set_epoch(child, epoch)
    if isinstance(getattr(dataset, "dataset", None), Dataset):  # Subset
        set_epoch(dataset.dataset, epoch)


def steps_in_epoch(loader: DataLoader, cfg: RunConfig) -> int:
    n = len(loader)
    return min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n


def limited(loader: DataLoader, steps: int) -> Iterator[dict[str, torch.Tensor]]:
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        yield batch


def resolve_model_config(cfg: RunConfig, labels: list[str]) -> PFViTConfig:
    """The architecture a run trains: the resumed checkpoint's; else the initialising
    checkpoint's (``TrainConfig.init``) with ``cfg.arch`` on top; else the size factory's with
    ``cfg.arch``. ``labels`` set the classes (the pre-training stage passes none)."""
    if cfg.resume:
        return PFViTConfig.from_dict(load_checkpoint(cfg.resume)["model_config"])
    arch = PFViTConfig.parse_overrides(cfg.arch)
    init = getattr(cfg, "init", "")
    if init:
        return PFViTConfig.from_dict({**load_checkpoint(init)["model_config"], **arch, "labels": list(labels)})
    return model_config(cfg.model, **arch, labels=list(labels))


def input_size(cfg: RunConfig) -> int:
    """The image side the data of a run must be built at (:func:`resolve_model_config`'s)."""
    return resolve_model_config(cfg, []).image_size


def _init_from(path: str, config: PFViTConfig, parts: tuple[str, ...]) -> PFViT:
    """``config``'s model with the weights of ``parts`` (state-dict prefixes such as
    ``"encoder."``) taken from the checkpoint at ``path``; every other part starts fresh."""
    model = PFViT(config)
    keep = {k: v for k, v in load_checkpoint(path)["model"].items() if k.startswith(parts)}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if unexpected or any(k.startswith(parts) for k in missing):
        raise RuntimeError(f"checkpoint {path} does not fit: missing {missing}, unexpected {unexpected}")
    return model


# ----------------------------------------------------------------------------- the run skeleton
@dataclass(frozen=True)
class RunResult:
    """What a run leaves: its last checkpoint, per-epoch summaries, the last validation
    metrics (None without validation data) and the trained parts."""

    checkpoint: str
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None
    model: PFViT
    discriminator: Discriminator | None = None
    last: dict[str, Any] = field(default_factory=dict)


def _restore(state: TrainState, payload: dict[str, Any], ctx: DistContext) -> None:
    state.model.load_state_dict(payload["model"])
    if state.discriminator is not None:
        if "discriminator" not in payload:
            raise ValueError("the checkpoint has no discriminator to resume this stage with")
        state.discriminator.load_state_dict(payload["discriminator"])
    for name in state.optimizers:
        state.optimizers[name].load_state_dict(payload["optimizers"][name])
        state.schedulers[name].load_state_dict(payload["schedulers"][name])
    state.step, state.epoch = int(payload["step"]), int(payload["epoch"])
    states = payload.get("rng") or []
    if len(states) == ctx.world_size:
        set_rng_state(states[ctx.rank])
    else:
        # A different world size cannot replay the old streams; start fresh, reproducibly.
        seed_everything(int(payload["stage_config"].get("seed", 0)) + ctx.rank + 7919 * state.epoch)


def _save(cfg: RunConfig, ctx: DistContext, state: TrainState, stage: str, extra: dict[str, Any]) -> Path | None:
    rngs = distributed.gather_objects(rng_state(), ctx)  # every rank takes part
    path = None
    if ctx.is_main:
        out = Path(cfg.out_dir)
        path = save_checkpoint(out / "last.pt", state, stage, cfg, rngs, extra)
        if cfg.save_every and state.epoch % cfg.save_every == 0:
            save_checkpoint(out / f"checkpoint-{state.epoch:04d}.pt", state, stage, cfg, rngs, extra)
    distributed.barrier(ctx)
    return path


def run_stage(
    stage: Stage, cfg: RunConfig, train_set: Dataset, val_set: Dataset | None = None, labels: list[str] | None = None
) -> RunResult:
    """Setup, resume, the epoch loop, evaluation and saving, shared by every stage.

    Args:
        stage: :class:`MAEStage`, :class:`PFViTStage` or :class:`EditorStage`.
        cfg: the stage config.
        train_set: training items (the dataset contract's dicts).
        val_set: evaluated by rank 0 every ``eval_every`` epochs and at the end (PF-ViT stage).
        labels: the model's classes (none for pre-training).
    """
    ctx = distributed.setup(cfg.device, cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    labels = list(labels or [])
    config = resolve_model_config(cfg, labels)
    if list(config.labels) != labels:
        raise ValueError(f"model labels {config.labels} differ from the data's {labels}")
    init = getattr(cfg, "init", "")
    model = _init_from(init, config, stage.init_parts) if init and not cfg.resume else PFViT(config)
    model.to(ctx.device)
    loader = make_loader(train_set, cfg, ctx, train=True)
    steps = steps_in_epoch(loader, cfg)
    state = stage.setup(model, ctx, steps)
    if cfg.resume:
        _restore(state, load_checkpoint(cfg.resume), ctx)
    out_dir = Path(cfg.out_dir)
    log = RunLog(out_dir / "log.jsonl", ctx.is_main)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(
            json.dumps({"stage": asdict(cfg), "model": model.config.to_dict()}, indent=2), encoding="utf-8"
        )
    val_loader = make_loader(val_set, cfg, ctx, train=False) if val_set is not None else None
    eval_every = getattr(cfg, "eval_every", 0)
    history: list[dict[str, Any]] = []
    metrics, path = None, None
    for epoch in range(state.epoch, cfg.epochs):
        state.epoch = epoch
        loader.sampler.set_epoch(epoch)
        set_epoch(train_set, epoch)
        t0 = time.perf_counter()
        stats = stage.train_one_epoch(state, limited(loader, steps), steps, ctx, log)
        stats = distributed.mean_over_ranks(stats, ctx)
        summary: dict[str, Any] = {
            "stage": stage.name,
            "epoch": epoch,
            "step": state.step,
            "summary": True,
            "seconds": time.perf_counter() - t0,
            **stats,
        }
        if val_loader is not None and (epoch + 1 == cfg.epochs or (eval_every and (epoch + 1) % eval_every == 0)):
            if ctx.is_main:
                # Rank 0 evaluates the whole validation set; the others wait at the barrier.
                metrics = evaluate(model, val_loader, ctx.device, out_dir / "eval", progress=cfg.progress)
                summary.update(val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
            distributed.barrier(ctx)
        log.write(summary)
        history.append(summary)
        state.epoch = epoch + 1
        path = _save(
            cfg, ctx, state, stage.name, {"last": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
        )
    return RunResult(
        checkpoint=str(path) if path else str(out_dir / "last.pt"),
        history=history,
        metrics=metrics,
        model=model,
        discriminator=state.discriminator,
        last=history[-1] if history else {},
    )


def run_pretrain(cfg: PretrainConfig, dataset: Dataset) -> RunResult:
    """MAE pre-training of encoder + generator on ``dataset``'s images (labels unused)."""
    return run_stage(MAEStage(cfg), cfg, dataset)


def run_editor(cfg: EditorConfig, train_set: Dataset) -> RunResult:
    """The editor stage on faces with true poker faces (rendered) mixed with photographs; the
    classes are ``train_set.labels`` (the finished model's)."""
    if not cfg.init:
        raise ValueError("the editor stage starts from a finished PF-ViT: give init")
    return run_stage(EditorStage(cfg), cfg, train_set, labels=list(train_set.labels))


def run_train(cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None = None) -> RunResult:
    """The PF-ViT stage on labelled (or partly labelled, label -1) faces; the classes are
    ``train_set.labels``."""
    return run_stage(PFViTStage(cfg), cfg, train_set, val_set, labels=list(train_set.labels))
