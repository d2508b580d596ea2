"""The judge: a plain CNN emotion classifier that never trains with the generator.

PF-ViT's own recognition graph is a poor referee of its poker faces: its cycle term optimises
exactly "read my poker face as neutral", which a generator can satisfy by a shortcut the
encoder learns to spot. The judge is trained separately, on the same real photos, and only
ever sees real faces in training; asking it whether a generated poker face looks neutral is an
independent check. The figure reported is the judge's neutral share on poker faces as a ratio
to its neutral recall on real neutral faces (``poker_face_report``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

# Widths of the four conv stages; each stage halves the resolution (48 -> 3 px). Narrow: on
# two CPU cores the judge must train in minutes, and ~60 % on FER2013 is all it needs to referee.
JUDGE_WIDTHS = (16, 32, 64, 128)


class JudgeCNN(nn.Module):
    """VGG-style CNN: four stages of two 3x3 conv + BN + ReLU, max-pooled, then a linear head.

    Input ``[N, 3, H, W]`` normalised like PF-ViT's input (the same mean/std), output logits.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = JUDGE_WIDTHS, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for width in widths:
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # [N, C, H/16, W/16]
        return self.head(f.mean(dim=(2, 3)))  # [N, K]


@dataclass(frozen=True)
class JudgeConfig:
    """Training of the judge.

    Args:
        epochs, batch_size, lr, weight_decay: AdamW with a one-cycle cosine schedule.
        label_smoothing: cross-entropy smoothing.
        seed: torch seed for initialisation and shuffling.
        out_dir: ``judge.pt`` (weights, config, labels, per-epoch log) is written there after
            every epoch; a rerun resumes from it.
    """

    out_dir: str = "runs/judge"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class JudgeResult:
    model: JudgeCNN
    labels: list[str]
    val_accuracy: float
    seconds: float


def _normalise(images01: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - m) / s


def save_judge(result: JudgeResult, path: str | Path) -> Path:
    """Keep a trained judge as plain data (weights, labels, widths, validation accuracy): the
    measuring instrument of a model's poker faces ships beside that model, so re-scoring it
    needs no retraining."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    widths = [m.out_channels for m in result.model.features if isinstance(m, nn.Conv2d)][1::2]
    torch.save(
        {
            "format": "pfvit-judge/1",
            "labels": result.labels,
            "widths": widths,
            "model": result.model.state_dict(),
            "val_accuracy": result.val_accuracy,
            "seconds": result.seconds,
        },
        path,
    )
    return path


def load_judge(path: str | Path) -> JudgeResult:
    """A judge written by :func:`save_judge`."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != "pfvit-judge/1":
        raise ValueError(f"{path} is not a judge file")
    model = JudgeCNN(len(data["labels"]), tuple(data["widths"]))
    model.load_state_dict(data["model"])
    return JudgeResult(
        model=model.eval(),
        labels=list(data["labels"]),
        val_accuracy=float(data["val_accuracy"]),
        seconds=float(data["seconds"]),
    )


@torch.no_grad()
def predict(
    model: JudgeCNN, images01: torch.Tensor, mean: list[float], std: list[float], batch_size: int = 256
) -> torch.Tensor:
    """Class indices for ``[N, 3, H, W]`` images in [0, 1]."""
    model.eval()
    out = [
        model(_normalise(images01[i : i + batch_size], mean, std)).argmax(1)
        for i in range(0, len(images01), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _accuracy(model: JudgeCNN, dataset: Dataset, mean: list[float], std: list[float]) -> float:
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=256, shuffle=False):
        pred = predict(model, batch["image"], mean, std)
        correct += int((pred == batch["label"]).sum())
        total += len(pred)
    return correct / max(1, total)


def _recipe(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "out_dir"}


def train_judge(
    cfg: JudgeConfig, train_set: Dataset, val_set: Dataset, mean: list[float], std: list[float]
) -> JudgeResult:
    """Train (or resume, or load when finished) the judge on ``train_set``; returns it with its
    validation accuracy."""
    labels = list(train_set.labels)
    path = Path(cfg.out_dir) / "judge.pt"
    torch.manual_seed(cfg.seed)
    model = JudgeCNN(len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training faces make no full batch of {cfg.batch_size}")
    total_steps = cfg.epochs * len(loader)
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total_steps - warmup))))
        ),
    )
    start, log, seconds = 0, [], 0.0
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        # Where the run lives is no part of what it trains: a moved run folder still resumes.
        if _recipe(state["config"]) != _recipe(asdict(cfg)) or state["labels"] != labels:
            raise ValueError(f"{path} was written by another judge configuration; remove it to retrain")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, log, seconds = state["epoch"], state["log"], state["seconds"]
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        model.train()
        running = 0.0
        for batch in loader:
            logits = model(_normalise(batch["image"], mean, std))
            loss = F.cross_entropy(logits, batch["label"], label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach())
        val = _accuracy(model, val_set, mean, std)
        seconds += time.perf_counter() - t0
        log.append({"epoch": epoch, "loss": running / len(loader), "val_accuracy": val, "seconds": seconds})
        print(json.dumps({"judge": log[-1]}), flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "config": asdict(cfg),
                "labels": labels,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "log": log,
                "seconds": seconds,
            },
            path,
        )
    return JudgeResult(
        model=model.eval(), labels=labels, val_accuracy=log[-1]["val_accuracy"] if log else 0.0, seconds=seconds
    )


def poker_face_report(
    judge: JudgeCNN,
    labels: list[str],
    inputs01: torch.Tensor,
    poker01: torch.Tensor,
    targets: torch.Tensor,
    mean: list[float],
    std: list[float],
) -> dict[str, object]:
    """The judge's reading of real faces and of their poker faces.

    Args:
        inputs01, poker01: ``[N, 3, H, W]`` in [0, 1]: the faces and their generated poker faces.
        targets: ``[N]`` true class indices.

    Returns:
        ``judge_accuracy`` on the inputs, ``neutral_recall`` (real neutral faces read neutral),
        ``poker_neutral_share`` (poker faces of non-neutral faces read neutral),
        ``poker_neutral_ratio`` (share / recall), and per true class the neutral share on the
        inputs and on the poker faces.
    """
    neutral = labels.index("neutral")
    on_inputs = predict(judge, inputs01, mean, std)
    on_poker = predict(judge, poker01, mean, std)
    is_neutral = targets == neutral
    recall = float((on_inputs[is_neutral] == neutral).float().mean()) if is_neutral.any() else float("nan")
    expressive = ~is_neutral
    share = float((on_poker[expressive] == neutral).float().mean()) if expressive.any() else float("nan")
    per_class = {}
    for k, name in enumerate(labels):
        mask = targets == k
        if mask.any():
            per_class[name] = {
                "n": int(mask.sum()),
                "inputs_read_neutral": float((on_inputs[mask] == neutral).float().mean()),
                "poker_read_neutral": float((on_poker[mask] == neutral).float().mean()),
            }
    return {
        "judge_accuracy": float((on_inputs == targets).float().mean()),
        "neutral_recall": recall,
        "poker_neutral_share": share,
        "poker_neutral_ratio": share / recall if recall and not np.isnan(recall) else float("nan"),
        "per_class": per_class,
    }
