"""Engine: one epoch of MAE pre-training, one epoch of the PF-ViT stage, and the runs that wire
model, data, optimizers, schedules, checkpoints and logs together.

Runs take a stage config and ready-made datasets (the CLI builds them), so tests call them
directly. Under ``torchrun`` the same functions run data-parallel: every process calls them,
rank 0 alone writes logs, checkpoints and evaluations.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from training import distributed
from training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import PFViTConfig, PretrainConfig, RunConfig, TrainConfig
from training.distributed import DistContext
from training.evaluate import evaluate
from training.model import MAEObjective, PFViT, SeparationObjective, build_model, weighted_total


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


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, ctx: DistContext, seed: int, train: bool) -> DataLoader:
    """Training loaders always go through a DistributedSampler (one replica when alone) so the
    order depends only on (seed, epoch): that is what makes resuming exact."""
    if train:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      drop_last=train, pin_memory=ctx.device.type == "cuda", persistent_workers=False)


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


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP over the parameters that currently require grad (frozen ones are left out by DDP)."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _restore_rng(payload: dict[str, Any], ctx: DistContext) -> None:
    states = payload.get("rng") or []
    if len(states) == ctx.world_size:
        set_rng_state(states[ctx.rank])
    else:
        # A different world size cannot replay the old streams; start fresh, reproducibly.
        seed_everything(int(payload["stage_config"].get("seed", 0)) + ctx.rank + 7919 * int(payload["epoch"]))


def _save(cfg: RunConfig, ctx: DistContext, model: PFViT, stage: str, optimizers: dict, schedulers: dict, step: int, epoch: int, extra: dict) -> Path | None:
    rngs = distributed.gather_objects(rng_state(), ctx)  # every rank takes part
    path = None
    if ctx.is_main:
        out = Path(cfg.out_dir)
        path = save_checkpoint(out / "last.pt", model, stage, cfg, optimizers, schedulers, step, epoch, rngs, extra)
        if cfg.save_every and epoch % cfg.save_every == 0:
            save_checkpoint(out / f"checkpoint-{epoch:04d}.pt", model, stage, cfg, optimizers, schedulers, step, epoch, rngs, extra)
    distributed.barrier(ctx)
    return path


def _model_overrides(cfg: RunConfig, labels: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if cfg.image_size:
        overrides["image_size"] = cfg.image_size
    if labels:
        overrides.update(num_classes=len(labels), labels=list(labels))
    if getattr(cfg, "poker_mode", ""):
        overrides["poker_mode"] = cfg.poker_mode
    if cfg.stem:
        overrides["stem"] = cfg.stem
    if cfg.greyscale:
        overrides["greyscale"] = True
    return overrides


# ----------------------------------------------------------------------------- MAE pre-training
def pretrain_one_epoch(
    objective: nn.Module,
    model: PFViT,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
    cfg: PretrainConfig,
    epoch: int,
    step: int,
    log: RunLog,
) -> tuple[dict[str, float], int]:
    """One epoch of MAE. Returns ``(epoch means, global step after it)``."""
    objective.train()
    steps = steps_in_epoch(loader, cfg)
    totals: dict[str, float] = {"loss": 0.0}
    bar = tqdm(limited(loader, steps), total=steps, desc=f"pretrain {epoch}", disable=not (cfg.progress and ctx.is_main))
    for batch in bar:
        x = model.normalise(batch["image"].to(ctx.device, non_blocking=True))  # [N, 3, H, W]
        with autocast_for(ctx.device):
            loss, _, _ = objective(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"MAE loss is {value} at step {step}")
        totals["loss"] += value
        record = {"stage": "pretrain", "epoch": epoch, "step": step, "loss": value, "lr": optimizer.param_groups[0]["lr"]}
        log.write(record)
        bar.set_postfix(loss=f"{value:.4f}")
    return {k: v / max(1, steps) for k, v in totals.items()}, step


def run_pretrain(cfg: PretrainConfig, dataset: Dataset) -> dict[str, Any]:
    """MAE pre-training of encoder + generator. Returns ``{"checkpoint": path, "history": [...]}``.

    Args:
        cfg: the stage config.
        dataset: images (labels, if any, are ignored).
    """
    ctx = distributed.setup(cfg.device, cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    payload = load_checkpoint(cfg.resume) if cfg.resume else None
    if payload is not None:
        model = PFViT(PFViTConfig.from_dict(payload["model_config"]))
    else:
        model = build_model(cfg.model, **_model_overrides(cfg, list(getattr(dataset, "labels", []) or [])))
    model.to(ctx.device)
    # MAE trains E and G only; frozen parts stay out of the optimizer and out of DDP.
    for part in (model.separator, model.head, model.discriminator):
        set_requires_grad(part, False)
    objective = wrap_ddp(MAEObjective(model, cfg.mask_ratio, cfg.norm_pix_loss), ctx)
    loader = make_loader(dataset, cfg.batch_size, cfg.num_workers, ctx, cfg.seed, train=True)
    steps = steps_in_epoch(loader, cfg)
    lr = cfg.blr * cfg.batch_size * ctx.world_size / 256
    optimizer = torch.optim.AdamW(model.optim_groups("main", cfg.weight_decay), lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(cfg.warmup_epochs * steps), cfg.epochs * steps, cfg.min_lr_ratio))
    start_epoch, step = 0, 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizers"]["main"])
        scheduler.load_state_dict(payload["schedulers"]["main"])
        start_epoch, step = int(payload["epoch"]), int(payload["step"])
        _restore_rng(payload, ctx)
    log = RunLog(Path(cfg.out_dir) / "log.jsonl", ctx.is_main)
    history, path = [], None
    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        stats, step = pretrain_one_epoch(objective, model, loader, optimizer, scheduler, ctx, cfg, epoch, step, log)
        stats = distributed.mean_over_ranks(stats, ctx)
        summary = {"stage": "pretrain", "epoch": epoch, "step": step, "summary": True, "seconds": time.perf_counter() - t0, **stats}
        log.write(summary)
        history.append(summary)
        path = _save(cfg, ctx, model, "pretrain", {"main": optimizer}, {"main": scheduler}, step, epoch + 1, {"last": stats})
    return {"checkpoint": str(path) if path else str(Path(cfg.out_dir) / "last.pt"), "history": history, "model": model}


# ----------------------------------------------------------------------------- PF-ViT stage
def targets_from_batch(batch: dict[str, torch.Tensor], num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [N, K] probabilities, labelled [N] float)`` from ``soft_label`` or ``label`` (-1 = none)."""
    label = batch["label"].to(device).long()
    labelled = (label >= 0).float()
    if "soft_label" in batch:
        targets = batch["soft_label"].to(device).float()
        labelled = (targets.sum(dim=1) > 0).float()
    else:
        targets = F.one_hot(label.clamp_min(0), num_classes).float() * labelled[:, None]
    return targets, labelled


def mixup(tensors: list[torch.Tensor | None], alpha: float) -> tuple[list[torch.Tensor | None], float, torch.Tensor]:
    """Mix each tensor with a shuffled copy of the batch by ``lam ~ Beta(alpha, alpha)``.

    Uses torch's RNG (restored on resume). Returns the mixed tensors, lam and the permutation.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    n = next(t for t in tensors if t is not None).shape[0]
    perm = torch.randperm(n)
    mixed = [None if t is None else lam * t + (1 - lam) * t[perm.to(t.device)] for t in tensors]
    return mixed, lam, perm


def generator_adv_loss(fake_logits: torch.Tensor, gan: str) -> torch.Tensor:
    """Generator side: hinge uses ``-D(fake)``; non-saturating uses ``softplus(-D(fake))``."""
    return -fake_logits.mean() if gan == "hinge" else F.softplus(-fake_logits).mean()


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, gan: str) -> torch.Tensor:
    if gan == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def train_one_epoch(
    gen_side: nn.Module,
    disc: nn.Module,
    model: PFViT,
    loader: DataLoader,
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    ctx: DistContext,
    cfg: TrainConfig,
    epoch: int,
    step: int,
    log: RunLog,
) -> tuple[dict[str, float], int]:
    """One epoch of the PF-ViT stage: a generator-side step, then a discriminator step.

    Args:
        gen_side: :class:`SeparationObjective` (DDP-wrapped when distributed).
        disc: the discriminator (DDP-wrapped when distributed).
        model: the unwrapped model (normalisation, the frozen D for the adversarial terms).
        loader, optimizers ("main", "disc"), schedulers: as built by :func:`run_train`.

    Returns ``(epoch means of every logged term, global step after the epoch)``.
    """
    gen_side.train()
    disc.train()
    steps = steps_in_epoch(loader, cfg)
    totals: dict[str, float] = {}
    correct = seen = 0.0
    k = model.config.num_classes
    bar = tqdm(limited(loader, steps), total=steps, desc=f"train {epoch}", disable=not (cfg.progress and ctx.is_main))
    for batch in bar:
        x = model.normalise(batch["image"].to(ctx.device, non_blocking=True))  # [N, 3, H, W]
        targets, labelled = targets_from_batch(batch, k, ctx.device)
        true_poker = model.normalise(batch["poker_face"].to(ctx.device)) if "poker_face" in batch else None
        has_poker = batch["has_poker_face"].to(ctx.device) if "has_poker_face" in batch else None
        if cfg.mixup_alpha > 0:
            (x, targets, true_poker), _, perm = mixup([x, targets, true_poker], cfg.mixup_alpha)
            labelled = labelled * labelled[perm.to(labelled.device)]
            if has_poker is not None:
                has_poker = has_poker * has_poker[perm.to(has_poker.device)]

        # Generator side (E, S, G, H): D frozen so its weights take no gradient from here.
        set_requires_grad(model.discriminator, False)
        with autocast_for(ctx.device):
            out = gen_side(x, targets, labelled, true_poker, has_poker)
            losses = dict(out.losses)
            losses["adv_poker"] = generator_adv_loss(model.discriminator(out.poker_face).float(), cfg.gan)
            losses["adv_rec"] = generator_adv_loss(model.discriminator(out.reconstruction).float(), cfg.gan)
        total = weighted_total(losses, cfg.weights)
        optimizers["main"].zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizers["main"].param_groups for p in g["params"]], cfg.grad_clip)
        optimizers["main"].step()
        schedulers["main"].step()

        # Discriminator: real faces against poker faces and reconstructions, in one forward
        # (one DDP forward per backward).
        set_requires_grad(model.discriminator, True)
        use_r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
        real = x.detach().requires_grad_(use_r1)
        fakes = torch.cat([out.poker_face.detach(), out.reconstruction.detach()])
        # R1 needs a double backward, which only SDPA's math kernel provides.
        with autocast_for(ctx.device), (sdpa_kernel(SDPBackend.MATH) if use_r1 else nullcontext()):
            d_logits = disc(torch.cat([real, fakes])).float()
        n = x.shape[0]
        loss_d = discriminator_loss(d_logits[:n], d_logits[n:], cfg.gan)
        d_terms = {"d": loss_d.detach()}
        if use_r1:
            (grad,) = torch.autograd.grad(d_logits[:n].sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1  # lazy R1, scaled to match
            d_terms["r1"] = r1.detach()
        optimizers["disc"].zero_grad(set_to_none=True)
        loss_d.backward()
        optimizers["disc"].step()
        schedulers["disc"].step()
        step += 1

        record = {name: float(v.detach()) for name, v in losses.items()}
        record.update({name: float(v) for name, v in d_terms.items()})
        record["total"] = float(total.detach())
        if not math.isfinite(record["total"]):
            raise FloatingPointError(f"PF-ViT loss is {record['total']} at step {step}")
        mask = labelled > 0
        if mask.any():
            correct += float((out.logits.argmax(1)[mask] == targets.argmax(1)[mask]).sum())
            seen += float(mask.sum())
        for name, value in record.items():
            totals[name] = totals.get(name, 0.0) + value
        log.write({"stage": "train", "epoch": epoch, "step": step, "lr": optimizers["main"].param_groups[0]["lr"], **record})
        bar.set_postfix(total=f"{record['total']:.3f}", cls=f"{record['cls']:.3f}", d=f"{record['d']:.3f}")
    means = {k: v / max(1, steps) for k, v in totals.items()}
    means["train_accuracy"] = correct / seen if seen else 0.0
    return means, step


def _init_from_pretrain(path: str, labels: list[str], cfg: TrainConfig) -> PFViT:
    """Architecture from the MAE checkpoint; its encoder and generator weights; a fresh head."""
    payload = load_checkpoint(path)
    model_cfg = PFViTConfig.from_dict({**payload["model_config"], **_model_overrides(replace(cfg, image_size=0), labels)})
    model = PFViT(model_cfg)
    keep = {k: v for k, v in payload["model"].items() if k.startswith(("encoder.", "generator."))}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if unexpected or any(k.startswith(("encoder.", "generator.")) for k in missing):
        raise RuntimeError(f"pre-training checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    return model


def neutral_index(labels: list[str]) -> int | None:
    """Index of the "neutral" class (case-insensitive), or None when the label set has none."""
    lowered = [name.lower() for name in labels]
    return lowered.index("neutral") if "neutral" in lowered else None


def run_train(cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None = None) -> dict[str, Any]:
    """The PF-ViT stage. Returns ``{"checkpoint", "history", "metrics", "model"}``.

    Args:
        cfg: the stage config.
        train_set: labelled (or partly labelled, label -1) faces; its ``labels`` name the classes.
        val_set: evaluated by rank 0 every ``cfg.eval_every`` epochs and at the end.
    """
    ctx = distributed.setup(cfg.device, cfg.threads)
    seed_everything(cfg.seed + ctx.rank)
    labels = list(train_set.labels)
    payload = load_checkpoint(cfg.resume) if cfg.resume else None
    if payload is not None:
        model = PFViT(PFViTConfig.from_dict(payload["model_config"]))
    elif cfg.init:
        model = _init_from_pretrain(cfg.init, labels, cfg)
    else:
        model = build_model(cfg.model, **_model_overrides(cfg, labels))
    if list(model.config.labels) != labels:
        raise ValueError(f"model labels {model.config.labels} differ from the data's {labels}")
    model.to(ctx.device)
    # DDP takes the parameters that require grad at construction: build the generator-side
    # wrapper with D frozen, then D's own wrapper.
    set_requires_grad(model.discriminator, False)
    # The generator decodes full token sets here, so MAE's mask token is unused: freeze it (DDP
    # without unused-parameter search needs every trainable parameter in every backward).
    model.generator.mask_token.requires_grad_(False)
    gen_side = wrap_ddp(SeparationObjective(model, neutral_index(labels), cfg.label_smoothing), ctx)
    set_requires_grad(model.discriminator, True)
    disc = wrap_ddp(model.discriminator, ctx)

    loader = make_loader(train_set, cfg.batch_size, cfg.num_workers, ctx, cfg.seed, train=True)
    steps = steps_in_epoch(loader, cfg)
    scale = cfg.batch_size * ctx.world_size / 256
    optimizers = {
        "main": torch.optim.AdamW(model.optim_groups("main", cfg.weight_decay), lr=cfg.blr * scale, betas=(0.9, 0.999)),
        "disc": torch.optim.AdamW(model.optim_groups("discriminator", cfg.weight_decay), lr=cfg.d_blr * scale, betas=tuple(cfg.d_betas)),
    }
    schedule = WarmupCosine(int(cfg.warmup_epochs * steps), cfg.epochs * steps, cfg.min_lr_ratio)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule) for name, opt in optimizers.items()}
    start_epoch, step = 0, 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        for name in optimizers:
            optimizers[name].load_state_dict(payload["optimizers"][name])
            schedulers[name].load_state_dict(payload["schedulers"][name])
        start_epoch, step = int(payload["epoch"]), int(payload["step"])
        _restore_rng(payload, ctx)
    out_dir = Path(cfg.out_dir)
    log = RunLog(out_dir / "log.jsonl", ctx.is_main)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"stage": asdict(cfg), "model": model.config.to_dict()}, indent=2), encoding="utf-8")
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers) if val_set is not None else None
    history, metrics, path = [], None, None
    for epoch in range(start_epoch, cfg.epochs):
        loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        stats, step = train_one_epoch(gen_side, disc, model, loader, optimizers, schedulers, ctx, cfg, epoch, step, log)
        stats = distributed.mean_over_ranks(stats, ctx)
        summary: dict[str, Any] = {"stage": "train", "epoch": epoch, "step": step, "summary": True, "seconds": time.perf_counter() - t0, **stats}
        last = epoch + 1 == cfg.epochs
        if val_loader is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            if ctx.is_main:
                # Rank 0 evaluates the whole validation set; the others wait at the barrier.
                metrics = evaluate(model, val_loader, ctx.device, out_dir / "eval", progress=cfg.progress)
                summary.update(val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
            distributed.barrier(ctx)
        log.write(summary)
        history.append(summary)
        extra = {"last": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
        path = _save(cfg, ctx, model, "train", optimizers, schedulers, step, epoch + 1, extra)
    return {"checkpoint": str(path) if path else str(out_dir / "last.pt"), "history": history, "metrics": metrics, "model": model}
