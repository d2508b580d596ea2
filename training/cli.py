"""Command-line entry points: ``pfvit-pretrain``, ``pfvit-train``, ``pfvit-train-editor``,
``pfvit-evaluate``, ``pfvit-export``, ``pfvit-align-dataset`` (or ``python -m training.cli <command> ...``).

Each command fills its stage's dataclass config from the command line (flags generated from
the dataclass fields by :func:`parse_config`, so the two never drift), builds the data with
:func:`training.data.build_data` and calls the engine. Data is named by a data spec,
``--data KIND:PATH[,key=value...]`` or ``--data KIND:key=value,...`` (kinds: rafdb, ferplus,
affectnet, affectnet7, affectnet8, folder, rendered, synthetic; see :mod:`training.data.spec`),
e.g. ``--data affectnet7:/data/AffectNet,precropped=true`` or ``--data rendered:n=16000``.
Heavy modules are imported inside the commands so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DATA_FIELDS = ("data", "val_data", "poker_data")  # config fields that hold data specs, checked at parse time


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
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if dataclasses.is_dataclass(hint):
            add_dataclass_arguments(parser, hint, prefix=f"{prefix}{f.name}_")
            continue
        flag = _flag(f.name, prefix)
        required = default is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if hint is bool:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is tuple:
            group.add_argument(
                flag,
                dest=prefix + f.name,
                type=typing.get_args(hint)[0],
                nargs=len(typing.get_args(hint)),
                default=default,
                metavar="V",
            )
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, dest=prefix + f.name, choices=typing.get_args(hint), default=default)
        else:
            group.add_argument(
                flag,
                dest=prefix + f.name,
                type=hint,
                default=default,
                required=required,
                help="(required)" if required else "",
            )


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


class _Parser(argparse.ArgumentParser):
    """A parser whose help ends with the data kinds a ``--data`` spec may name, when the command
    takes one (read from the registry only when help is asked for: it imports torch)."""

    lists_data_kinds = False

    def format_help(self) -> str:
        text = super().format_help()
        if not self.lists_data_kinds:
            return text
        from training.data.spec import DATA_KINDS

        lines = ["data kinds (--data KIND:PATH[,key=value...] or KIND:key=value,...):"]
        for kind, entry in DATA_KINDS.items():
            options = ", ".join(f"{k}={v!r}" for k, v in entry.options.items())
            lines.append(
                f"  {kind:<12} {'a folder' if entry.needs_path else 'no folder'}" + (f"; {options}" if options else "")
            )
        return text + "\n" + "\n".join(lines) + "\n"


def parse_config(
    cls: type,
    prog: str,
    description: str,
    argv: Sequence[str] | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Any:
    """Fill ``cls`` from ``argv``; data specs are checked here, so a bad one is a usage error.

    Args:
        extra: adds flags that are not fields of ``cls``; their values come back as
            ``(config, {name: value})`` instead of the config alone.
    """
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.lists_data_kinds = any(f.name in DATA_FIELDS for f in dataclasses.fields(cls))
    add_dataclass_arguments(parser, cls)
    if extra is not None:
        extra(parser)
    values = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(cls)}
    for name in DATA_FIELDS:
        if values.get(name) and name in names:
            from training.data.spec import DataSpec

            try:
                values[name] = str(DataSpec.parse(values[name]))
            except ValueError as exc:
                parser.error(f"--{name.replace('_', '-')}: {exc}")
    if "arch" in values and "arch" in names:
        from training.config import PFViTConfig

        try:
            PFViTConfig.parse_overrides(values["arch"])
        except ValueError as exc:
            parser.error(f"--arch: {exc}")
    cfg = dataclass_from_args(cls, values)
    if extra is None:
        return cfg
    top = {k: v for k, v in values.items() if k not in names and not any(k.startswith(n + "_") for n in names)}
    return cfg, top


# ----------------------------------------------------------------------------- commands
def pretrain_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-pretrain``: MAE pre-training of encoder + generator on unlabeled faces."""
    from training import distributed
    from training.config import PretrainConfig
    from training.data import build_data
    from training.engine import input_size, run_pretrain

    cfg = parse_config(PretrainConfig, "pfvit-pretrain", pretrain_main.__doc__ or "", argv)
    if not cfg.data:
        raise SystemExit("pfvit-pretrain: --data is required (a data spec such as rafdb:/data/RAF-DB)")
    dataset = build_data(cfg.data, "train", input_size(cfg), augment=True)
    try:
        result = run_pretrain(cfg, dataset)
    finally:
        distributed.cleanup()
    print(json.dumps({"checkpoint": result.checkpoint, "last": result.last or None}))


def train_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-train``: the PF-ViT stage (separation, generation, adversarial, cycles)."""
    from training import distributed
    from training.config import TrainConfig
    from training.data import build_data
    from training.engine import input_size, run_train

    cfg = parse_config(TrainConfig, "pfvit-train", train_main.__doc__ or "", argv)
    if not cfg.data:
        raise SystemExit("pfvit-train: --data is required (a data spec such as rafdb:/data/RAF-DB)")
    size = input_size(cfg)
    train_set = build_data(cfg.data, "train", size, augment=True)
    val_set = build_data(cfg.val_data or cfg.data, "val", size, augment=False)
    try:
        result = run_train(cfg, train_set, val_set)
    finally:
        distributed.cleanup()
    print(json.dumps({"checkpoint": result.checkpoint, "val_accuracy": (result.metrics or {}).get("accuracy")}))


def editor_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-train-editor``: the editor stage, a convolutional expression editor trained on a
    finished PF-ViT (``--init``) whose other parts stay frozen."""
    from training import distributed
    from training.config import EditorConfig
    from training.data import build_data
    from training.data.joint import JointFaces
    from training.engine import resolve_model_config, run_editor

    cfg = parse_config(EditorConfig, "pfvit-train-editor", editor_main.__doc__ or "", argv)
    if not cfg.data or not cfg.init:
        raise SystemExit("pfvit-train-editor: --data and --init (a PF-ViT stage checkpoint) are required")
    config = resolve_model_config(cfg, [])
    train_set = build_data(cfg.data, "train", config.image_size, augment=True)
    if cfg.poker_data:
        poker = build_data(cfg.poker_data, "train", config.image_size, augment=False)
        train_set = JointFaces(train_set, poker, greyscale=config.greyscale, rendered_repeat=cfg.poker_repeat)
    try:
        result = run_editor(cfg, train_set)
    finally:
        distributed.cleanup()
    print(json.dumps({"checkpoint": result.checkpoint, "last": result.last or None}))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-evaluate``: accuracy, per-class accuracy, macro-F1, confusion matrix and samples."""
    from torch.utils.data import DataLoader

    from training.checkpoint import model_from_checkpoint
    from training.config import EvalConfig
    from training.data import build_data
    from training.distributed import setup
    from training.evaluate import evaluate

    cfg = parse_config(EvalConfig, "pfvit-evaluate", evaluate_main.__doc__ or "", argv)
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
    import torch

    from training.checkpoint import load_checkpoint
    from training.config import ExportConfig
    from training.data import build_data
    from training.export import export_checkpoint

    cfg = parse_config(ExportConfig, "pfvit-export", export_main.__doc__ or "", argv)
    size = int(load_checkpoint(cfg.checkpoint)["model_config"]["image_size"])
    if cfg.data:
        dataset = build_data(cfg.data, "val", size, augment=False)
        images = torch.stack([dataset[i]["image"] for i in range(min(8, len(dataset)))])
    else:
        # No data named: fall back to reproducible uniform noise, and say so.
        print("pfvit-export: no --data given; checking parity on random images", file=sys.stderr)
        images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    result = export_checkpoint(
        cfg.checkpoint,
        cfg.out_dir,
        images,
        name=cfg.name,
        version=cfg.version,
        license=cfg.license,
        description=cfg.description,
        metrics_path=cfg.metrics or None,
        opset=cfg.opset,
        poker_face=cfg.poker_face,
        fp16=cfg.fp16,
        mirror_average=cfg.mirror_average,
        poker_luma=cfg.poker_luma,
    )
    print(json.dumps(result))


def align_dataset_main(argv: Sequence[str] | None = None) -> None:
    """``pfvit-align-dataset``: forwards to :func:`training.data.align_dataset.main`."""
    from training.data.align_dataset import main

    main(argv)


COMMANDS: dict[str, Callable[[Sequence[str] | None], None]] = {
    "pretrain": pretrain_main,
    "train": train_main,
    "train-editor": editor_main,
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
