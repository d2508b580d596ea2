"""Model cards: the JSON file beside every shipped ONNX model.

A card carries everything the service needs to run a model without guessing: the labels in
order, the input size, mean/std and colour order, each graph's file, inputs, outputs and
sha256, and the training data and metrics that produced it. ``training/`` writes cards with
:func:`write_card`; the service reads them with :func:`load_card` and checks them with
:func:`verify_files` before creating a single session.

Layout on disk (one folder per model)::

    models/<name>/card.json
    models/<name>/<graph files named by the card>

This module is pure Python (no ONNX Runtime, no torch) so both sides share it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError

CARD_FILENAME = "card.json"
CARD_SCHEMA = "pfvit-card/1"

# Graph names an emotion model may carry, and what each one computes.
RECOGNITION_GRAPH = "recognition"  # aligned face -> logits (+ emotional embedding)
POKER_FACE_GRAPH = "poker_face"  # aligned face -> poker-face image in [0, 1]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` uses strings for dynamic axes (e.g. ``"batch"``)."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    description: str = ""


PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of a model. ``precision`` is that of its weights and arithmetic
    (``"fp16"`` graphs still take and give the float32 tensors their specs name); cards
    written before it existed are fp32."""

    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"


@dataclass(frozen=True)
class InputSpec:
    """How an aligned face becomes the network input.

    ``size`` is ``[height, width]`` in pixels; pixels are scaled to [0, 1] and then
    normalised per channel with ``mean``/``std`` in ``colour_order``; the tensor is NCHW.
    """

    size: list[int]
    mean: list[float]
    std: list[float]
    colour_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    alignment: str = "5-point similarity transform to the 112px template, scaled to size"


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    kind: str  # "emotion" or "detector"
    graphs: dict[str, GraphSpec]
    labels: list[str] = field(default_factory=list)
    input: InputSpec | None = None
    description: str = ""
    license: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = CARD_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        try:
            graphs = {
                gname: GraphSpec(
                    file=g["file"],
                    sha256=g["sha256"],
                    inputs=[TensorSpec(**t) for t in g["inputs"]],
                    outputs=[TensorSpec(**t) for t in g["outputs"]],
                    precision=str(g.get("precision", "fp32")),
                )
                for gname, g in data["graphs"].items()
            }
            inp = data.get("input")
            card = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                kind=str(data["kind"]),
                graphs=graphs,
                labels=list(data.get("labels") or []),
                input=InputSpec(**inp) if inp else None,
                description=data.get("description", ""),
                license=data.get("license", ""),
                training=dict(data.get("training") or {}),
                extra=dict(data.get("extra") or {}),
                schema=data.get("schema", CARD_SCHEMA),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"model card is malformed: {exc!r}") from exc
        card.validate()
        return card

    def validate(self) -> None:
        if self.schema != CARD_SCHEMA:
            raise ModelLoadError(f"card schema {self.schema!r} is not {CARD_SCHEMA!r}")
        if not self.graphs:
            raise ModelLoadError(f"card {self.name!r} names no graph")
        for gname, graph in self.graphs.items():
            if graph.precision not in PRECISIONS:
                raise ModelLoadError(
                    f"card {self.name!r}: graph {gname!r} has precision {graph.precision!r}, not one of {PRECISIONS}"
                )
        if self.kind == "emotion":
            if RECOGNITION_GRAPH not in self.graphs:
                raise ModelLoadError(f"emotion card {self.name!r} has no {RECOGNITION_GRAPH!r} graph")
            if not self.labels or len(set(self.labels)) != len(self.labels):
                raise ModelLoadError(f"emotion card {self.name!r} needs distinct labels, got {self.labels}")
            if self.input is None:
                raise ModelLoadError(f"emotion card {self.name!r} has no input spec")
            if len(self.input.size) != 2 or len(self.input.mean) != 3 or len(self.input.std) != 3:
                raise ModelLoadError(f"emotion card {self.name!r} has a malformed input spec")
            if self.input.colour_order not in ("RGB", "BGR"):
                raise ModelLoadError(f"unknown colour order {self.input.colour_order!r}")
            if any(s <= 0 for s in self.input.std):
                raise ModelLoadError("input std must be positive")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(model_dir: str | Path) -> ModelCard:
    """Read and validate ``<model_dir>/card.json`` (checksums are checked by :func:`verify_files`)."""
    path = Path(model_dir) / CARD_FILENAME
    if not path.is_file():
        raise ModelLoadError(f"no model card at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model card {path} is not readable JSON: {exc}") from exc
    return ModelCard.from_dict(data)


def verify_files(card: ModelCard, model_dir: str | Path) -> dict[str, Path]:
    """Check every graph file exists and matches its sha256. Returns ``{graph: path}``."""
    paths: dict[str, Path] = {}
    for gname, graph in card.graphs.items():
        path = Path(model_dir) / graph.file
        if not path.is_file():
            raise ModelLoadError(f"model {card.name!r}: graph {gname!r} file {path} is missing")
        actual = sha256_file(path)
        if actual != graph.sha256:
            raise ModelLoadError(f"model {card.name!r}: {path.name} has sha256 {actual}, card says {graph.sha256}")
        paths[gname] = path
    return paths


def write_card(card: ModelCard, model_dir: str | Path) -> Path:
    """Validate and write ``card.json`` into ``model_dir``. Returns its path."""
    card.validate()
    path = Path(model_dir) / CARD_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
