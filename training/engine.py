"""Engine: one epoch of MAE pre-training, of the PF-ViT stage and of the editor stage, and the
one run skeleton (:func:`run_stage`) that wires model, data, optimizers, schedules, checkpoints,
logs and evaluation together for all three.

Runs take a stage config and ready-made datasets (the CLI builds them), so tests call them
directly. Under ``torchrun`` the same functions run data-parallel: every process calls them,
rank 0 alone writes logs, checkpoints and evaluations.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from training import distributed
from training.adversarial import Discriminator, PokerFaceObjective, StageBatch, build_discriminator, prepare_batch
from training.checkpoint import TrainState, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import CriticRunConfig, EditorConfig, PFViTConfig, PretrainConfig, RunConfig, TrainConfig
from training.data.sampling import BalancedSampler
from training.distributed import DistContext, wrap_ddp
from training.editing import CriticSets, EditorCritic, EditorLoss, EditorObjective, build_critic, critic_sets
from training.evaluate import evaluate
from training.model import MAEObjective, PFViT, model_config, optim_groups


# ----------------------------------------------------------------------------- small pieces
class WarmupCosine:
    """Learning-rate multiplier: linear warm-up from 0, then cosine down to ``min_ratio``.

    A class, not a lambda, so ``LambdaLR.state_dict`` stores it as plain numbers.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(1, total_steps)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class RunLog:
    """Append-only JSON-lines log (``log.jsonl``) of per-step and per-epoch records; rank 0 only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


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


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full float32 on CPU (CPU bf16 is slow and noisy for small models)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


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


def neutral_index(labels: list[str]) -> int | None:
    """Index of the "neutral" class (case-insensitive), or None when the label set has none."""
    lowered = [name.lower() for name in labels]
    return lowered.index("neutral") if "neutral" in lowered else None


def _adamw(params: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=betas)


def _critic_optimizer(discriminator: torch.nn.Module, cfg: CriticRunConfig, ctx: DistContext) -> torch.optim.AdamW:
    """D's AdamW at ``d_blr * effective batch / 256`` with ``d_betas``."""
    scale = cfg.batch_size * ctx.world_size / 256
    return _adamw(optim_groups(discriminator, cfg.weight_decay), cfg.d_blr * scale, tuple(cfg.d_betas))


# ----------------------------------------------------------------------------- stages
class Stage(Protocol):
    """What differs between the stages; :func:`run_stage` does the rest."""

    name: str
    init_parts: tuple[str, ...]  # state-dict prefixes an ``init`` checkpoint gives the stage

    def setup(self, model: PFViT, ctx: DistContext, steps_per_epoch: int) -> TrainState:
        """Freeze what the stage does not train, build objective, optimizers and schedulers."""

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        """Run ``steps`` optimizer steps; advance ``state.step``; return the epoch's means."""


def _schedule(cfg: RunConfig, steps_per_epoch: int) -> WarmupCosine:
    return WarmupCosine(int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch, cfg.min_lr_ratio)


def _one_optimizer(
    model: PFViT,
    params: list[dict[str, Any]],
    cfg: RunConfig,
    ctx: DistContext,
    steps_per_epoch: int,
    betas: tuple[float, float],
) -> TrainState:
    """A stage state with one AdamW ("main") at ``blr * effective batch / 256`` and its schedule."""
    optimizer = _adamw(params, cfg.blr * cfg.batch_size * ctx.world_size / 256, betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch))
    return TrainState(model=model, optimizers={"main": optimizer}, schedulers={"main": scheduler})


class MAEStage:
    """MAE pre-training of encoder + generator (separator and head stay out of the optimizer and DDP)."""

    name = "pretrain"
    init_parts: tuple[str, ...] = ()

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.objective: torch.nn.Module | None = None

    def setup(self, model: PFViT, ctx: DistContext, steps_per_epoch: int) -> TrainState:
        cfg = self.cfg
        for part in (model.separator, model.head):
            part.requires_grad_(False)
        self.objective = wrap_ddp(MAEObjective(model, cfg.mask_ratio, cfg.norm_pix_loss), ctx)
        return _one_optimizer(model, model.optim_groups(cfg.weight_decay), cfg, ctx, steps_per_epoch, (0.9, 0.95))

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        cfg, model = self.cfg, state.model
        optimizer, scheduler = state.optimizers["main"], state.schedulers["main"]
        self.objective.train()
        total = 0.0
        bar = tqdm(batches, total=steps, desc=f"pretrain {state.epoch}", disable=not (cfg.progress and ctx.is_main))
        for batch in bar:
            x = model.normalise(batch["image"].to(ctx.device, non_blocking=True))  # [N, 3, H, W]
            with autocast_for(ctx.device):
                loss, _, _ = self.objective(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            state.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"MAE loss is {value} at step {state.step}")
            total += value
            log.write(
                {
                    "stage": "pretrain",
                    "epoch": state.epoch,
                    "step": state.step,
                    "loss": value,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            bar.set_postfix(loss=f"{value:.4f}")
        return {"loss": total / max(1, steps)}


class PFViTStage:
    """The PF-ViT stage: per step a generator-side step (E, S, G, H), then a discriminator step,
    both through :class:`~training.adversarial.PokerFaceObjective`."""

    name = "train"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.objective: PokerFaceObjective | None = None
        # A pre-training checkpoint gives encoder and generator (separator and head start
        # fresh); a PF-ViT stage checkpoint gives everything, D included: a new schedule on it.
        self.continues = bool(cfg.init) and load_checkpoint(cfg.init).get("stage") == self.name
        self.init_parts: tuple[str, ...] = ("",) if self.continues else ("encoder.", "generator.")

    def setup(self, model: PFViT, ctx: DistContext, steps_per_epoch: int) -> TrainState:
        cfg = self.cfg
        # The generator decodes full token sets here, so MAE's mask token is unused: out of the
        # optimizer and of DDP (which, without unused-parameter search, needs every trainable
        # parameter in every backward).
        model.generator.mask_token.requires_grad_(False)
        if not cfg.separation:  # the ablation's plain ViT: the generator neither trains nor runs
            model.generator.requires_grad_(False)
            model.separator.neutral_coords.requires_grad_(False)
        discriminator = build_discriminator(model.config).to(ctx.device) if cfg.separation else None
        if discriminator is not None and self.continues and not cfg.resume:
            payload = load_checkpoint(cfg.init)
            if "discriminator" in payload:  # absent when the stage it continues ran without separation
                discriminator.load_state_dict(payload["discriminator"])
        self.objective = PokerFaceObjective(model, discriminator, cfg, neutral_index(model.config.labels), ctx)
        scale = cfg.batch_size * ctx.world_size / 256
        optimizers = {"main": _adamw(model.optim_groups(cfg.weight_decay), cfg.blr * scale, (0.9, 0.999))}
        if discriminator is not None:
            optimizers["disc"] = _critic_optimizer(discriminator, cfg, ctx)
        schedule = _schedule(cfg, steps_per_epoch)
        schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}
        return TrainState(model=model, optimizers=optimizers, schedulers=schedulers, discriminator=discriminator)

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        cfg, model, objective = self.cfg, state.model, self.objective
        main, disc = state.optimizers["main"], state.optimizers.get("disc")
        objective.train()
        totals: dict[str, float] = {}
        correct = seen = 0.0
        bar = tqdm(batches, total=steps, desc=f"train {state.epoch}", disable=not (cfg.progress and ctx.is_main))
        for raw in bar:
            batch = prepare_batch(raw, model, ctx.device, cfg.mixup_alpha)
            with autocast_for(ctx.device):
                gen = objective.generator_loss(batch)
            main.zero_grad(set_to_none=True)
            gen.total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in main.param_groups for p in g["params"]], cfg.grad_clip)
            main.step()
            state.schedulers["main"].step()

            d_terms: dict[str, torch.Tensor] = {}
            if disc is not None:
                loss_d, d_terms = objective.discriminator_loss(
                    batch.images, gen.fakes, state.step, lambda: autocast_for(ctx.device)
                )
                disc.zero_grad(set_to_none=True)
                loss_d.backward()
                disc.step()
                state.schedulers["disc"].step()
            state.step += 1

            record = {name: float(v.detach()) for name, v in gen.terms.items()}
            record.update({name: float(v) for name, v in d_terms.items()})
            record["total"] = float(gen.total.detach())
            if not math.isfinite(record["total"]):
                raise FloatingPointError(f"PF-ViT loss is {record['total']} at step {state.step}")
            mask = batch.labelled > 0
            if mask.any():
                correct += float((gen.logits.argmax(1)[mask] == batch.targets.argmax(1)[mask]).sum())
                seen += float(mask.sum())
            for name, value in record.items():
                totals[name] = totals.get(name, 0.0) + value
            log.write(
                {"stage": "train", "epoch": state.epoch, "step": state.step, "lr": main.param_groups[0]["lr"], **record}
            )
            bar.set_postfix(total=f"{record['total']:.3f}", cls=f"{record['cls']:.3f}", d=f"{record.get('d', 0.0):.3f}")
        means = {k: v / max(1, steps) for k, v in totals.items()}
        means["train_accuracy"] = correct / seen if seen else 0.0
        return means


class EditorStage:
    """The editor stage: only the :class:`~training.model.ExpressionEditor` of a finished
    PF-ViT trains (:class:`~training.editing.EditorObjective`); every other part is frozen, so
    recognition is the PF-ViT stage's to the bit. With ``cfg.adv`` above 0, a patch critic
    (:class:`~training.editing.EditorCritic`) learns beside it: per editor step, ``d_steps``
    critic steps on the same batch."""

    name = "editor"
    # Everything of the finished PF-ViT; the editor alone starts fresh (from zero change).
    init_parts = ("colour.", "encoder.", "separator.", "generator.", "head.")

    def __init__(self, cfg: EditorConfig) -> None:
        self.cfg = cfg
        self.objective: torch.nn.Module | None = None
        self.critic: EditorCritic | None = None

    def setup(self, model: PFViT, ctx: DistContext, steps_per_epoch: int) -> TrainState:
        cfg = self.cfg
        if model.editor is None:
            raise ValueError("the editor stage needs poker_mode='editor' (its default --arch)")
        model.requires_grad_(False)
        model.editor.requires_grad_(True)
        neutral = neutral_index(model.config.labels)
        self.objective = wrap_ddp(EditorObjective(model, cfg, neutral), ctx)
        state = _one_optimizer(
            model, optim_groups(model.editor, cfg.weight_decay), cfg, ctx, steps_per_epoch, (0.9, 0.999)
        )
        if cfg.adv > 0:
            self._add_critic(state, neutral, ctx, steps_per_epoch)
        return state

    def _add_critic(self, state: TrainState, neutral: int | None, ctx: DistContext, steps_per_epoch: int) -> None:
        """The critic, its optimizer and its schedule (the editor's, in editor steps), in ``state``."""
        if neutral is None:
            raise ValueError("the editor's critic learns from neutral photographs: the labels need a 'neutral' class")
        discriminator = build_critic(state.model, self.cfg).to(ctx.device)
        self.critic = EditorCritic(state.model, discriminator, self.cfg, neutral, ctx)
        state.discriminator = discriminator
        state.optimizers["disc"] = _critic_optimizer(discriminator, self.cfg, ctx)
        state.schedulers["disc"] = torch.optim.lr_scheduler.LambdaLR(
            state.optimizers["disc"], _schedule(self.cfg, steps_per_epoch)
        )

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        model = state.model
        # Frozen parts stay in evaluation mode (the stem's batch norms keep their statistics).
        model.eval()
        model.editor.train()
        if self.critic is not None:
            self.critic.train()
        totals: dict[str, float] = {}
        bar = tqdm(batches, total=steps, desc=f"editor {state.epoch}", disable=not (self.cfg.progress and ctx.is_main))
        for raw in bar:
            record = self._step(state, prepare_batch(raw, model, ctx.device), ctx)
            for name, value in record.items():
                totals[name] = totals.get(name, 0.0) + value
            log.write(
                {
                    "stage": "editor",
                    "epoch": state.epoch,
                    "step": state.step,
                    "lr": state.optimizers["main"].param_groups[0]["lr"],
                    **record,
                }
            )
            bar.set_postfix(total=f"{record['total']:.4f}")
        return {k: v / max(1, steps) for k, v in totals.items()}

    def _step(self, state: TrainState, batch: StageBatch, ctx: DistContext) -> dict[str, float]:
        """One editor step, then the critic's steps; returns the step's log record."""
        cfg, optimizer = self.cfg, state.optimizers["main"]
        with autocast_for(ctx.device):
            loss: EditorLoss = self.objective(batch)
        total, terms = loss.total, dict(loss.terms)
        sets = critic_sets(batch, self.critic.neutral_index) if self.critic is not None else None
        if sets is not None:
            with autocast_for(ctx.device):
                terms["adv"] = self.critic.generator_loss(loss.poker, sets)
            total = total + cfg.adv * terms["adv"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(state.model.editor.parameters(), cfg.grad_clip)
        optimizer.step()
        state.schedulers["main"].step()
        d_terms = self._critic_steps(state, batch, loss.poker.detach(), sets, ctx) if sets is not None else {}
        state.step += 1
        record = {name: float(v.detach()) for name, v in terms.items()}
        record.update({name: float(v) for name, v in d_terms.items()})
        record["total"] = float(total.detach())
        if not math.isfinite(record["total"]):
            raise FloatingPointError(f"editor loss is {record['total']} at step {state.step}")
        return record

    def _critic_steps(
        self, state: TrainState, batch: StageBatch, poker: torch.Tensor, sets: CriticSets, ctx: DistContext
    ) -> dict[str, torch.Tensor]:
        """``d_steps`` critic steps on this batch; the terms of the last one."""
        disc, d_steps = state.optimizers["disc"], self.cfg.d_steps
        terms: dict[str, torch.Tensor] = {}
        for k in range(d_steps):
            loss_d, terms = self.critic.discriminator_loss(
                batch.images, poker, sets, state.step * d_steps + k, lambda: autocast_for(ctx.device)
            )
            disc.zero_grad(set_to_none=True)
            loss_d.backward()
            disc.step()
        state.schedulers["disc"].step()
        return terms


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
