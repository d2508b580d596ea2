"""Command-line entry points: ``pfvit-pretrain``, ``pfvit-train``, ``pfvit-evaluate``,
``pfvit-export``, ``pfvit-align-dataset`` (or ``python -m training.cli <command> ...``).

Each command fills its stage's dataclass config from the command line (flags generated from
the dataclass fields, so the two never drift), builds the datasets and calls the engine.
Data is named ``--data KIND:PATH`` with KIND in rafdb, ferplus, affectnet, folder, ``rendered:N``
(N rendered training faces, ``training.render``), or ``synthetic:N`` (N procedural images with a known poker face; for smoke runs only).
Dataset builders are imported lazily so these commands load before :mod:`training.data` exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

DATA_KINDS = ("rafdb", "ferplus", "affectnet", "folder", "rendered", "synthetic")
DEFAULT_IMAGE_SIZE = {"micro": 64, "tiny": 224, "small": 224, "base": 224}


# ----------------------------------------------------------------------------- data
class SyntheticFaces(Dataset):
    """Procedural stand-in data: a grey face disc with a class-specific coloured mark.

    The same image without the mark is its ``poker_face``, so every part of the PF-ViT stage
    runs. Deterministic per index. Not faces; for smoke tests and demos only.

    Args:
        size: number of items.
        image_size: side in pixels.
        seed: varies the per-item noise.
    """

    labels = ["happiness", "sadness", "surprise", "neutral"]

    def __init__(self, size: int, image_size: int, seed: int = 0) -> None:
        self.size = size
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        s = self.image_size
        label = index % len(self.labels)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        tone = 0.4 + 0.3 * torch.rand(3, 1, 1, generator=g)
        disc = ((xx**2 / 0.6 + yy**2 / 0.8) < 1).float()
        poker = (0.1 + disc * tone + 0.03 * torch.rand(3, s, s, generator=g)).clamp(0, 1)
        image = poker.clone()
        if self.labels[label] != "neutral":
            # The "expression": a coloured band whose height and colour depend on the class.
            row = int(s * (0.55 + 0.1 * label))
            image[label % 3, row : row + max(2, s // 12), s // 4 : 3 * s // 4] = 1.0
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "poker_face": poker}


def parse_data(spec: str) -> tuple[str, str]:
    """``"KIND:PATH"`` -> ``(kind, path)``; the kind must be known."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in DATA_KINDS:
        raise SystemExit(f"--data must be KIND:PATH with KIND in {', '.join(DATA_KINDS)}; got {spec!r}")
    return kind, path


def build_data(spec: str, split: str, image_size: int, augment: bool) -> Dataset:
    """Build one split of the dataset named by ``spec`` (builders imported lazily)."""
    kind, path = parse_data(spec)
    if kind == "synthetic":
        size = int(path or 64)
        return SyntheticFaces(size if split == "train" else max(8, size // 4), image_size, seed=0 if split == "train" else 1)
    if kind == "rendered":
        from training.render.dataset import RenderedFaceDataset

        # rendered:N -> N training items; val/test get a tenth (at least 64), disjoint identities.
        n = int(path or 8000)
        length = n if split == "train" else max(64, n // 10)
        return RenderedFaceDataset(split=split, image_size=image_size, length=length, seed=0, augment=augment)
    from training.data import build_dataset

    return build_dataset(kind, path, split, image_size, augment)


# ----------------------------------------------------------------------------- config <-> argparse
def _flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per field of ``cls`` (nested dataclasses get a ``<field>-`` prefix)."""
    hints = typing.get_type_hints(cls)
    docs = (cls.__doc__ or "").strip().splitlines()[0]
    group = parser.add_argument_group(prefix.rstrip("_") or cls.__name__, docs)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(hint):
            add_dataclass_arguments(parser, hint, prefix=f"{prefix}{f.name}_")
            continue
        flag = _flag(f.name, prefix)
        required = default is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if hint is bool:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is tuple:
            group.add_argument(flag, dest=prefix + f.name, type=typing.get_args(hint)[0], nargs=len(typing.get_args(hint)), default=default, metavar="V")
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, dest=prefix + f.name, choices=typing.get_args(hint), default=default)
        else:
            group.add_argument(flag, dest=prefix + f.name, type=hint, default=default, required=required,
                               help="(required)" if required else "")


def dataclass_from_args(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build ``cls`` from the parsed values (the namespace never leaves this module)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = dataclass_from_args(hint, values, prefix=f"{prefix}{f.name}_")
        else:
            value = values[prefix + f.name]
            kwargs[f.name] = tuple(value) if typing.get_origin(hint) is tuple else value
    return cls(**kwargs)


def parse_config(cls: type, prog: str, description: str, argv: Sequence[str] | None) -> Any:
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, vars(parser.parse_args(argv)))


def _image_size(model: str, image_size: int, checkpoint: str) -> int:
    """The input side the data must be built at: explicit, else the checkpoint's, else the factory's."""
    if image_size:
        return image_size
    if checkpoint:
        from training.checkpoint import load_checkpoint

        return int(load_checkpoint(checkpoint)["model_config"]["image_size"])
    return DEFAULT_IMAGE_SIZE[model]


# ----------------------------------------------------------------------------- commands
def pretrain_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-pretrain``: MAE pre-training of encoder + generator on unlabeled faces."""
    from training import distributed
    from training.config import PretrainConfig
    from training.engine import run_pretrain

    cfg = parse_config(PretrainConfig, "pfvit-pretrain", pretrain_main.__doc__, argv)
    if not cfg.data:
        raise SystemExit("--data KIND:PATH is required")
    dataset = build_data(cfg.data, "train", _image_size(cfg.model, cfg.image_size, cfg.resume), augment=True)
    try:
        result = run_pretrain(cfg, dataset)
    finally:
        distributed.cleanup()
    print(json.dumps({"checkpoint": result["checkpoint"], "last": result["history"][-1] if result["history"] else None}))


def train_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-train``: the PF-ViT stage (separation, generation, adversarial, cycles)."""
    from training import distributed
    from training.config import TrainConfig
    from training.engine import run_train

    cfg = parse_config(TrainConfig, "pfvit-train", train_main.__doc__, argv)
    if not cfg.data:
        raise SystemExit("--data KIND:PATH is required")
    size = _image_size(cfg.model, cfg.image_size, cfg.resume or cfg.init)
    train_set = build_data(cfg.data, "train", size, augment=True)
    val_set = build_data(cfg.val_data or cfg.data, "val", size, augment=False)
    try:
        result = run_train(cfg, train_set, val_set)
    finally:
        distributed.cleanup()
    print(json.dumps({"checkpoint": result["checkpoint"], "val_accuracy": (result["metrics"] or {}).get("accuracy")}))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-evaluate``: accuracy, per-class accuracy, macro-F1, confusion matrix and samples."""
    from torch.utils.data import DataLoader

    from training.checkpoint import model_from_checkpoint
    from training.config import EvalConfig
    from training.distributed import setup
    from training.evaluate import evaluate

    cfg = parse_config(EvalConfig, "pfvit-evaluate", evaluate_main.__doc__, argv)
    ctx = setup(cfg.device, cfg.threads)
    model, _ = model_from_checkpoint(cfg.checkpoint)
    dataset = build_data(cfg.data, cfg.split, model.config.image_size, augment=False)
    if list(dataset.labels) != list(model.config.labels):
        raise SystemExit(f"data labels {list(dataset.labels)} differ from the model's {model.config.labels}")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    metrics = evaluate(model.to(ctx.device), loader, ctx.device, cfg.out_dir, max_batches=cfg.max_batches)
    metrics.update(data=cfg.data, split=cfg.split, checkpoint=cfg.checkpoint)
    (Path(cfg.out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: metrics[k] for k in ("accuracy", "macro_f1", "mean_class_accuracy", "num_samples")}))


def export_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-export``: ONNX graphs + card from a checkpoint, checked against ONNX Runtime."""
    from training.checkpoint import load_checkpoint
    from training.config import ExportConfig
    from training.export import export_checkpoint

    cfg = parse_config(ExportConfig, "pfvit-export", export_main.__doc__, argv)
    size = int(load_checkpoint(cfg.checkpoint)["model_config"]["image_size"])
    if cfg.data:
        dataset = build_data(cfg.data, "val", size, augment=False)
        images = torch.stack([dataset[i]["image"] for i in range(min(8, len(dataset)))])
    else:
        # No data named: fall back to reproducible uniform noise, and say so.
        print("pfvit-export: no --data given; checking parity on random images", file=sys.stderr)
        images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    result = export_checkpoint(cfg.checkpoint, cfg.out_dir, images, name=cfg.name, version=cfg.version, license=cfg.license,
                               description=cfg.description, metrics_path=cfg.metrics or None, opset=cfg.opset, poker_face=cfg.poker_face)
    print(json.dumps(result))


def align_dataset_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-align-dataset``: forwards to :func:`training.data.align_dataset.main`."""
    from training.data.align_dataset import main

    main(argv)


COMMANDS: dict[str, Callable[[Sequence[str] | None], None]] = {
    "pretrain": pretrain_main,
    "train": train_main,
    "evaluate": evaluate_main,
    "export": export_main,
    "align-dataset": align_dataset_main,
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.cli <command> [flags]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} [--help | flags]", file=sys.stderr)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    main()
