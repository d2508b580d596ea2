"""Data specs: one text names one data set, for the command line, checkpoints and model cards.

Syntax: ``KIND:PATH[,key=value...]`` for data on disk (``rafdb:/data/RAF-DB``,
``affectnet7:/data/AffectNet,face=box,precropped=true``) and ``KIND:key=value,...`` for
generated data (``rendered:seed=0,size=64,n=16000``, ``synthetic:n=64``). :class:`DataSpec`
parses and prints that text (``str(DataSpec.parse(text)) == text`` for canonical text), and
:func:`build_data` turns a spec into one split of a ``Dataset``; the command line, the default
recipe and the tests all go through it.

Kinds live in one registry, :data:`DATA_KINDS` (kind -> :class:`DataKind`). A dataset class
``Cls(root, split, transform, **options)`` becomes a kind in one line, ``"name": disk_kind(Cls)``;
its keyword options are then reachable from the spec, typed after their defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from training.data.datasets import RAFDB, AffectNet, ImageFolder
from training.data.fer2013 import FER2013
from training.data.ferplus import FERPlus
from training.data.synthetic import SyntheticFaces
from training.data.transforms import FaceTransform

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class DataSpec:
    """One data set: its kind, its folder (empty for generated kinds) and its options.

    Options keep their text form in the order given, so a spec prints back as it was written;
    the kind's builder types them.
    """

    kind: str
    path: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, kind: str, path: str | Path = "", **options: Any) -> DataSpec:
        """A spec from Python values (``DataSpec.of("affectnet", root, num_classes=7)``)."""
        return cls(kind, str(path), tuple((k, _format_value(v)) for k, v in options.items())).checked()

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """Parse ``KIND:PATH[,key=value...]`` or ``KIND:key=value,...``.

        Raises:
            ValueError: an unknown kind (the message lists the kinds), a missing or unexpected
                path, a malformed or repeated option.
        """
        kind, sep, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in DATA_KINDS:
            raise ValueError(
                f"unknown data kind in {text!r}; use KIND:PATH[,key=value...] or KIND:key=value,... "
                f"with KIND in {', '.join(DATA_KINDS)}"
            )
        parts = [p.strip() for p in rest.split(",")] if sep and rest.strip() else []
        path = ""
        if DATA_KINDS[kind].needs_path and parts and "=" not in parts[0]:
            path = parts.pop(0)
        options = []
        for part in filter(None, parts):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"data spec {text!r}: {part!r} is not key=value")
            options.append((key.strip(), value.strip()))
        return cls(kind, path, tuple(options)).checked()

    def checked(self) -> DataSpec:
        """This spec, after checking the path rule and the option names against its kind."""
        if self.kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; use one of {', '.join(DATA_KINDS)}")
        kind = DATA_KINDS[self.kind]
        if kind.needs_path and not self.path:
            raise ValueError(f"data kind {self.kind!r} needs a folder: {self.kind}:PATH[,key=value...]")
        if not kind.needs_path and self.path:
            raise ValueError(f"data kind {self.kind!r} takes no folder: {self.kind}:key=value,...")
        keys = [k for k, _ in self.options]
        if len(set(keys)) != len(keys):
            raise ValueError(f"data spec {self}: an option is given twice")
        unknown = set(keys) - set(kind.options)
        if unknown:
            raise ValueError(
                f"data kind {self.kind!r} has no option {sorted(unknown)}; its options: "
                f"{', '.join(kind.options) or 'none'}"
            )
        self.typed_options()  # a value of the wrong type fails here, not when the data loads
        return self

    def __str__(self) -> str:
        parts = ([self.path] if self.path else []) + [f"{k}={v}" for k, v in self.options]
        return f"{self.kind}:{','.join(parts)}"

    def typed_options(self) -> dict[str, Any]:
        """The options converted to the types of the kind's defaults."""
        defaults = DATA_KINDS[self.kind].options
        return {key: _coerce(key, value, defaults[key]) for key, value in self.options}


def _coerce(key: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(f"expected true or false, got {text!r}")
            return low in _TRUE
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError as exc:
        raise ValueError(f"data option {key}={text}: {exc}") from exc
    return text


Builder = Callable[[DataSpec, str, int, bool], Dataset]


@dataclass(frozen=True)
class DataKind:
    """One entry of :data:`DATA_KINDS`.

    Attributes:
        build: ``(spec, split, image_size, augment) -> Dataset``.
        needs_path: the spec names a folder.
        options: option name -> default (its type types the option's text).
    """

    build: Builder
    needs_path: bool
    options: Mapping[str, Any]


def disk_kind(cls: type, **fixed: Any) -> DataKind:
    """A kind for a dataset class ``cls(root, split, transform, **options)``: its keyword
    options (after the three positional ones) become spec options, minus ``fixed`` ones."""
    params = list(inspect.signature(cls).parameters.values())[3:]
    options = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name not in fixed}

    def build(spec: DataSpec, split: str, image_size: int, augment: bool) -> Dataset:
        root = Path(spec.path)
        if not root.is_dir():
            raise ValueError(f"dataset root {root} is not a folder")
        return cls(
            root, split, FaceTransform(image_size=image_size, augment=augment), **{**spec.typed_options(), **fixed}
        )

    return DataKind(build, needs_path=True, options=options)


def _build_rendered(spec: DataSpec, split: str, image_size: int, augment: bool) -> Dataset:
    # Imported here: only this kind needs the renderer.
    from training.render.dataset import RenderedFaceDataset

    o = {**RENDERED_OPTIONS, **spec.typed_options()}
    if o["size"] and o["size"] != image_size:
        raise ValueError(f"{spec} renders {o['size']} px faces, the model takes {image_size} px")
    lengths = {
        "train": o["n"],
        "val": o["val_n"] or max(64, o["n"] // 10),
        "test": o["test_n"] or max(64, o["n"] // 10),
    }
    if split not in lengths:
        raise ValueError(f"rendered data has splits {', '.join(lengths)}, not {split!r}")
    return RenderedFaceDataset(
        split=split, image_size=image_size, length=lengths[split], seed=o["seed"], augment=augment and split == "train"
    )


def _build_synthetic(spec: DataSpec, split: str, image_size: int, augment: bool) -> Dataset:
    o = {**SYNTHETIC_OPTIONS, **spec.typed_options()}
    # Other splits: a quarter as many items (at least 8), from another seed.
    length = o["n"] if split == "train" else max(8, o["n"] // 4)
    return SyntheticFaces(length, image_size, seed=o["seed"] if split == "train" else o["seed"] + 1)


# n: training items; val_n / test_n: 0 = a tenth of n (at least 64); size: the rendered side,
# recorded so the spec says what was trained on (0 = the model's input side).
RENDERED_OPTIONS: dict[str, Any] = {"seed": 0, "size": 0, "n": 8000, "val_n": 0, "test_n": 0}
SYNTHETIC_OPTIONS: dict[str, Any] = {"n": 64, "seed": 0}

# The registry: one line per kind.
DATA_KINDS: dict[str, DataKind] = {
    "rafdb": disk_kind(RAFDB),
    "ferplus": disk_kind(FERPlus),
    "affectnet": disk_kind(AffectNet),
    "affectnet7": disk_kind(AffectNet, num_classes=7),
    "affectnet8": disk_kind(AffectNet, num_classes=8),
    "folder": disk_kind(ImageFolder),
    "fer2013": disk_kind(FER2013),
    "rendered": DataKind(_build_rendered, needs_path=False, options=RENDERED_OPTIONS),
    "synthetic": DataKind(_build_synthetic, needs_path=False, options=SYNTHETIC_OPTIONS),
}


def build_data(spec: DataSpec | str, split: str, image_size: int, augment: bool) -> Dataset:
    """One split of the data set ``spec`` names, with ``image_size`` square ``image`` tensors.

    Args:
        spec: a :class:`DataSpec` or its text.
        split: "train", "val" or "test" (for "folder": the sub-folder name).
        image_size: side of the square images (the model's input side).
        augment: apply the training augmentations.

    Raises:
        ValueError: a bad spec, split or folder, missing files, malformed label files.
    """
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec.checked()
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return DATA_KINDS[spec.kind].build(spec, split, image_size, augment)
