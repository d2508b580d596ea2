"""The three training stages (MAE pre-training, the PF-ViT stage, the editor stage): what
differs between them, each as a :class:`Stage` that :func:`training.engine.run_stage` runs,
and the one step loop (:func:`epoch_loop`) and optimizer step (:func:`optimizer_step`) that
they all go through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from tqdm import tqdm

from training.adversarial import PokerFaceObjective, StageBatch, build_discriminator, prepare_batch
from training.checkpoint import TrainState, load_checkpoint
from training.config import CriticRunConfig, EditorConfig, PretrainConfig, RunConfig, TrainConfig
from training.distributed import DistContext, wrap_ddp
from training.editing import (
    CriticSets,
    EditorCritic,
    EditorLoss,
    EditorObjective,
    build_critic,
    critic_sets,
    jitter_poker_pairs,
)
from training.model import MAEObjective, PFViT, optim_groups

# ----------------------------------------------------------------------------- small pieces
T = TypeVar("T")


def built(part: T | None, what: str) -> T:
    """``part``, which a stage's ``setup`` builds; an error when it has not run."""
    if part is None:
        raise RuntimeError(f"{what} is built by the stage's setup(), which has not run")
    return part


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


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full float32 on CPU (CPU bf16 is slow and noisy for small models)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def neutral_index(labels: list[str]) -> int | None:
    """Index of the "neutral" class (case-insensitive), or None when the label set has none."""
    lowered = [name.lower() for name in labels]
    return lowered.index("neutral") if "neutral" in lowered else None


def _adamw(params: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=betas)


def critic_optimizer(discriminator: torch.nn.Module, cfg: CriticRunConfig, ctx: DistContext) -> torch.optim.AdamW:
    """D's AdamW at ``d_blr * effective batch / 256`` with ``d_betas``."""
    scale = cfg.batch_size * ctx.world_size / 256
    return _adamw(optim_groups(discriminator, cfg.weight_decay), cfg.d_blr * scale, (cfg.d_betas[0], cfg.d_betas[1]))


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


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """One optimizer step on ``loss``, the same in every stage: zero the gradients, backward,
    clip the norm of ``params`` to ``grad_clip`` (0: no clipping), step, advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(list(params), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def epoch_loop(
    stage: str,
    state: TrainState,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: int,
    ctx: DistContext,
    log: RunLog,
    progress: bool,
    step: Callable[[dict[str, torch.Tensor]], dict[str, float]],
    key: str = "total",
) -> dict[str, float]:
    """The step loop every stage runs: ``step`` does one batch's optimizer steps and returns
    its record (floats); this advances ``state.step``, stops on a non-finite ``record[key]``,
    logs each record with the main optimizer's learning rate, shows progress and returns the
    epoch's means."""
    totals: dict[str, float] = {}
    bar = tqdm(batches, total=steps, desc=f"{stage} {state.epoch}", disable=not (progress and ctx.is_main))
    for raw in bar:
        record = step(raw)
        state.step += 1
        if not math.isfinite(record[key]):
            raise FloatingPointError(f"{stage} loss is {record[key]} at step {state.step}")
        for name, value in record.items():
            totals[name] = totals.get(name, 0.0) + value
        lr = state.optimizers["main"].param_groups[0]["lr"]
        log.write({"stage": stage, "epoch": state.epoch, "step": state.step, "lr": lr, **record})
        bar.set_postfix({key: f"{record[key]:.4f}"})
    return {k: v / max(1, steps) for k, v in totals.items()}


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
        objective = built(self.objective, "the MAE objective")
        objective.train()

        def step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
            x = model.normalise(batch["image"].to(ctx.device, non_blocking=True))  # [N, 3, H, W]
            with autocast_for(ctx.device):
                loss, _, _ = objective(x)
            optimizer_step(state.optimizers["main"], state.schedulers["main"], loss, model.parameters(), cfg.grad_clip)
            return {"loss": float(loss.detach())}

        return epoch_loop(self.name, state, batches, steps, ctx, log, cfg.progress, step, key="loss")


class PFViTStage:
    """The PF-ViT stage: per step a generator-side step (E, S, G, H), then a discriminator step,
    both through :class:`~training.adversarial.PokerFaceObjective`."""

    name = "train"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.objective: PokerFaceObjective | None = None
        # A pre-training checkpoint gives encoder and generator (separator and head start
        # fresh); a PF-ViT stage checkpoint gives everything, D included: a new schedule on it.
        init = load_checkpoint(cfg.init) if cfg.init and not cfg.resume else {}
        self.continues = init.get("stage") == self.name
        self.init_parts: tuple[str, ...] = ("",) if self.continues else ("encoder.", "generator.")
        # D of the stage it continues (absent when that stage ran without separation).
        self._init_discriminator = init.get("discriminator") if self.continues else None

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
        if discriminator is not None and self._init_discriminator is not None:
            discriminator.load_state_dict(self._init_discriminator)
        self.objective = PokerFaceObjective(model, discriminator, cfg, neutral_index(model.config.labels), ctx)
        scale = cfg.batch_size * ctx.world_size / 256
        optimizers: dict[str, torch.optim.Optimizer] = {
            "main": _adamw(model.optim_groups(cfg.weight_decay), cfg.blr * scale, (0.9, 0.999))
        }
        if discriminator is not None:
            optimizers["disc"] = critic_optimizer(discriminator, cfg, ctx)
        schedule = _schedule(cfg, steps_per_epoch)
        schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}
        return TrainState(model=model, optimizers=optimizers, schedulers=schedulers, discriminator=discriminator)

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        cfg, model, objective = self.cfg, state.model, built(self.objective, "the PF-ViT objective")
        main, disc = state.optimizers["main"], state.optimizers.get("disc")
        objective.train()
        seen = [0.0, 0.0]  # labelled faces classified right, and in all

        def step(raw: dict[str, torch.Tensor]) -> dict[str, float]:
            batch = prepare_batch(raw, model, ctx.device, cfg.mixup_alpha)
            with autocast_for(ctx.device):
                gen = objective.generator_loss(batch)
            params = [p for g in main.param_groups for p in g["params"]]
            optimizer_step(main, state.schedulers["main"], gen.total, params, cfg.grad_clip)
            d_terms: dict[str, torch.Tensor] = {}
            if disc is not None:
                loss_d, d_terms = objective.discriminator_loss(
                    batch.images,
                    built(gen.fakes, "the generator's fakes"),
                    state.step,
                    lambda: autocast_for(ctx.device),
                )
                optimizer_step(disc, state.schedulers["disc"], loss_d, (), 0.0)
            record = {name: float(v.detach()) for name, v in gen.terms.items()}
            record.update({name: float(v) for name, v in d_terms.items()})
            record["total"] = float(gen.total.detach())
            mask = batch.labelled > 0
            if mask.any():
                seen[0] += float((gen.logits.argmax(1)[mask] == batch.targets.argmax(1)[mask]).sum())
                seen[1] += float(mask.sum())
            return record

        means = epoch_loop(self.name, state, batches, steps, ctx, log, cfg.progress, step)
        means["train_accuracy"] = seen[0] / seen[1] if seen[1] else 0.0
        return means


class EditorStage:
    """The editor stage: only the :class:`~training.model.ExpressionEditor` of a finished
    PF-ViT trains (:class:`~training.editing.EditorObjective`); every other part is frozen, so
    recognition is the PF-ViT stage's to the bit. With ``cfg.adv`` above 0, a critic
    (:class:`~training.editing.EditorCritic`, patch or whole-face) learns beside it: per editor
    step, ``d_steps`` critic steps on the same batch, after ``d_warmup`` steps of the critic
    alone; ``editor_init`` starts the editor from a finished one."""

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
        if cfg.editor_init:
            self._start_editor(model, cfg.editor_init)
        if cfg.adv > 0:
            self._add_critic(state, neutral, ctx, steps_per_epoch)
        return state

    @staticmethod
    def _start_editor(model: PFViT, path: str) -> None:
        """The editor's weights from a finished editor stage's checkpoint at ``path``: this stage
        goes on from that editor (a resumed run then restores its own)."""
        payload = load_checkpoint(path)
        prefix = "editor."
        weights = {k[len(prefix) :]: v for k, v in payload["model"].items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{path} has no editor to start from")
        built(model.editor, "the editor").load_state_dict(weights)

    def _add_critic(self, state: TrainState, neutral: int | None, ctx: DistContext, steps_per_epoch: int) -> None:
        """The critic, its optimizer and its schedule (the editor's, in editor steps), in ``state``."""
        if neutral is None:
            raise ValueError("the editor's critic learns from neutral photographs: the labels need a 'neutral' class")
        discriminator = build_critic(state.model, self.cfg).to(ctx.device)
        self.critic = EditorCritic(state.model, discriminator, self.cfg, neutral, ctx)
        state.discriminator = discriminator
        state.optimizers["disc"] = critic_optimizer(discriminator, self.cfg, ctx)
        state.schedulers["disc"] = torch.optim.lr_scheduler.LambdaLR(
            state.optimizers["disc"], _schedule(self.cfg, steps_per_epoch)
        )

    def train_one_epoch(
        self, state: TrainState, batches: Iterator[dict[str, torch.Tensor]], steps: int, ctx: DistContext, log: RunLog
    ) -> dict[str, float]:
        model = state.model
        # Frozen parts stay in evaluation mode (the stem's batch norms keep their statistics).
        model.eval()
        built(model.editor, "the editor").train()
        if self.critic is not None:
            self.critic.train()

        def step(raw: dict[str, torch.Tensor]) -> dict[str, float]:
            return self._step(state, prepare_batch(raw, model, ctx.device), ctx)

        return epoch_loop(self.name, state, batches, steps, ctx, log, self.cfg.progress, step)

    def _step(self, state: TrainState, batch: StageBatch, ctx: DistContext) -> dict[str, float]:
        """One editor step, then the critic's steps; returns the step's log record.

        During the critic's warm-up (the first ``d_warmup`` steps) the editor only draws: no
        gradient (so no backward for DDP to wait on), no adversarial term, no update. The critic
        starts the game knowing what the editor's faces look like, instead of learning it while
        the editor moves."""
        cfg, optimizer, critic = self.cfg, state.optimizers["main"], self.critic
        batch = jitter_poker_pairs(batch, cfg.poker_translate, cfg.poker_scale)
        warmup = critic is not None and state.step < cfg.d_warmup
        with torch.no_grad() if warmup else nullcontext(), autocast_for(ctx.device):
            loss: EditorLoss = built(self.objective, "the editor objective")(batch)
        total, terms = loss.total, dict(loss.terms)
        sets = critic_sets(batch, critic.neutral_index) if critic is not None else None
        if not warmup:
            if critic is not None and sets is not None:
                with autocast_for(ctx.device):
                    terms["adv"] = critic.generator_loss(loss.poker, sets)
                total = total + cfg.adv * terms["adv"]
            optimizer_step(
                optimizer,
                state.schedulers["main"],
                total,
                built(state.model.editor, "the editor").parameters(),
                cfg.grad_clip,
            )
        d_terms = self._critic_steps(state, batch, loss.poker.detach(), sets, ctx) if sets is not None else {}
        record = {name: float(v.detach()) for name, v in terms.items()}
        record.update({name: float(v) for name, v in d_terms.items()})
        record["total"] = float(total.detach())
        return record

    def _critic_steps(
        self, state: TrainState, batch: StageBatch, poker: torch.Tensor, sets: CriticSets, ctx: DistContext
    ) -> dict[str, torch.Tensor]:
        """``d_steps`` critic steps on this batch; the terms of the last one."""
        disc, d_steps = state.optimizers["disc"], self.cfg.d_steps
        terms: dict[str, torch.Tensor] = {}
        for k in range(d_steps):
            loss_d, terms = built(self.critic, "the critic").discriminator_loss(
                batch.images, poker, sets, state.step * d_steps + k, lambda: autocast_for(ctx.device)
            )
            optimizer_step(disc, None, loss_d, (), 0.0)
        state.schedulers["disc"].step()
        return terms
