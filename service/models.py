"""Loaded models: the PF-ViT emotion model (recognition + poker-face graphs) and the detector.

A model's life: verify its card and checksums, create sessions, check that the sessions
match the card (inputs, outputs, label count), warm up, then serve. Only after every model
has been warmed up does the service report ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service import metrics
from service.batching import Graph, MicroBatcher, run_in_chunks
from service.card import POKER_FACE_GRAPH, RECOGNITION_GRAPH, ModelCard, load_card, verify_files
from service.errors import CapabilityMissing, ModelLoadError
from service.runtime import CPU, ORT_ERRORS, SessionSpec, device_of, primary_provider
from service.vision.align import normalise, to_uint8_images

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

# How requests call one graph (``service.scheduling.Scheduler.batched``): the graph's runner
# and its name -> what requests call.
Batching = Callable[[Graph, str], Graph]

# The output each graph is run for.
GRAPH_OUTPUTS = {RECOGNITION_GRAPH: "logits", POKER_FACE_GRAPH: "poker_face"}


@dataclass(frozen=True)
class RecognitionOutput:
    logits: np.ndarray  # (B, K) float32, in the card's label order
    probabilities: np.ndarray  # (B, K) float32, softmax of logits


def _rgb(values: list[float]) -> tuple[float, float, float]:
    """A card's per-channel mean or std (the card checks that there are three)."""
    r, g, b = values
    return float(r), float(g), float(b)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def emotion_files(card: ModelCard, model_dir: str | Path) -> dict[str, Path]:
    """The verified graph files of an emotion card: its kind checked, every file's sha256
    compared.

    Raises:
        ModelLoadError: not an emotion card, or a file missing or altered.
    """
    if card.kind != "emotion":
        raise ModelLoadError(f"{model_dir} holds a {card.kind!r} model, not an emotion model")
    return verify_files(card, model_dir)


class EmotionModel:
    """A PF-ViT emotion model exported to ONNX: recognition graph, optional poker-face graph.

    Faces come in aligned, as ``(B, H, W, 3) uint8`` RGB at the card's input size.
    """

    def __init__(
        self,
        card: ModelCard,
        sessions: dict[str, InferenceSession],
        max_batch: int = 64,
        batched: Batching | None = None,
        device_id: int = 0,
    ) -> None:
        """``batched``: how requests call each graph (``service.scheduling.Scheduler.batched``:
        through a micro-batcher shared with concurrent requests); None runs each call on its
        own, in chunks of ``max_batch``. ``device_id``: the GPU of sessions that run on one
        (``PFVIT_CUDA_DEVICE_ID``)."""
        self.card = card
        self.sessions = sessions
        self._devices = {name: device_of(session) for name, session in sessions.items()}
        self._device_id = device_id
        self.max_batch = max_batch
        if card.input is None:  # an emotion card always has one (ModelCard's validation)
            raise ModelLoadError(f"{card.name}: the card has no input section")
        self.input_hw: tuple[int, int] = (int(card.input.size[0]), int(card.input.size[1]))
        self._mean = _rgb(card.input.mean)
        self._std = _rgb(card.input.std)
        self._bgr = card.input.colour_order == "BGR"
        self._check_contract()
        self._graphs: dict[str, Graph] = {
            name: batched(partial(self._run_graph, name), name) if batched is not None else partial(self._chunked, name)
            for name in self.sessions
        }

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        sessions: SessionSpec | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        max_batch: int = 64,
        batched: Batching | None = None,
    ) -> EmotionModel:
        """Read the card, verify every checksum (:func:`emotion_files`), and load the graphs
        as ``sessions`` says; without it, on ``providers`` (the CPU by default) with
        ``intra_op_threads`` ONNX Runtime threads each (0: its default)."""
        spec = sessions or SessionSpec(providers=tuple(providers or (CPU,)), intra_op_threads=intra_op_threads)
        card = load_card(model_dir)
        return cls.from_verified(card, emotion_files(card, model_dir), spec, max_batch=max_batch, batched=batched)

    @classmethod
    def from_verified(
        cls,
        card: ModelCard,
        paths: dict[str, Path],
        sessions: SessionSpec,
        *,
        max_batch: int = 64,
        batched: Batching | None = None,
    ) -> EmotionModel:
        """Load graphs whose checksums were already verified (:func:`emotion_files`' answer)."""
        graphs = {name: sessions.create(path) for name, path in paths.items()}
        return cls(card, graphs, max_batch=max_batch, batched=batched, device_id=sessions.device_id)

    # --- contract ----------------------------------------------------------------------------

    def _check_contract(self) -> None:
        """The sessions must take and give what the card promises; refuse to serve otherwise."""
        h, w = self.input_hw
        if h != w:
            raise ModelLoadError(f"input must be square for the 5-point template, card says {h}x{w}")
        n_labels = len(self.card.labels)
        for name, session in self.sessions.items():
            graph = self.card.graphs[name]
            inputs = session.get_inputs()
            if len(inputs) != 1 or inputs[0].name != graph.inputs[0].name:
                raise ModelLoadError(f"{name}: session inputs {[i.name for i in inputs]} do not match the card")
            shape = inputs[0].shape  # dynamic axes come back as names (str) or None

            def fits(dim: int | str | None, want: int) -> bool:
                return dim == want or dim is None or isinstance(dim, str)

            if len(shape) != 4 or not (fits(shape[1], 3) and fits(shape[2], h) and fits(shape[3], w)):
                raise ModelLoadError(
                    f"{name}: session input shape {shape} does not match the card's [batch, 3, {h}, {w}]"
                )
            outputs = {o.name: o for o in session.get_outputs()}
            for spec in graph.outputs:
                if spec.name not in outputs:
                    raise ModelLoadError(f"{name}: card output {spec.name!r} missing from the graph ({list(outputs)})")
        logits = self.sessions[RECOGNITION_GRAPH].get_outputs()
        logits_shape = {o.name: o.shape for o in logits}.get("logits")
        if logits_shape is None:
            raise ModelLoadError("recognition graph has no 'logits' output")
        if isinstance(logits_shape[-1], int) and logits_shape[-1] != n_labels:
            raise ModelLoadError(f"recognition graph gives {logits_shape[-1]} logits for {n_labels} labels")

    # --- info --------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    @property
    def has_poker_face(self) -> bool:
        return POKER_FACE_GRAPH in self.sessions

    @property
    def providers(self) -> dict[str, list[str]]:
        return {name: s.get_providers() for name, s in self.sessions.items()}

    @property
    def provider(self) -> str:
        return primary_provider(self.sessions[RECOGNITION_GRAPH])

    # --- inference ---------------------------------------------------------------------------

    def _prepare(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces, dtype=np.uint8)
        if faces.ndim != 4 or faces.shape[1:3] != self.input_hw or faces.shape[3] != 3:
            raise ValueError(f"faces must be (B, {self.input_hw[0]}, {self.input_hw[1]}, 3) uint8, got {faces.shape}")
        if self._bgr:
            faces = faces[..., ::-1]
        return normalise(faces, self._mean, self._std)  # (B, 3, H, W) float32

    def _run_graph(self, graph: str, x: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call of ``graph`` on ``(N, 3, H, W)`` rows; its output rows.

        Through IOBinding, on every provider: the batch goes to the session's device once, the
        one output we read (logits, or poker faces) is left there by the run and copied back
        once; outputs we do not read (the embedding) never leave the device. On the CPU the
        answer is bit for bit that of ``session.run`` (tests/test_models.py).
        """
        session = self.sessions[graph]
        metrics.INFERENCE_BATCH.labels(graph=graph).observe(x.shape[0])
        binding = session.io_binding()
        binding.bind_cpu_input(session.get_inputs()[0].name, np.ascontiguousarray(x))
        binding.bind_output(GRAPH_OUTPUTS[graph], self._devices[graph], self._device_id)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _chunked(self, graph: str, x: np.ndarray) -> np.ndarray:
        return run_in_chunks(partial(self._run_graph, graph), x, self.max_batch)

    def _run_batched(self, graph: str, x: np.ndarray) -> np.ndarray:
        return self._graphs[graph](x)

    @property
    def batchers(self) -> dict[str, MicroBatcher]:
        """The graphs that requests call through a micro-batcher, by name."""
        return {name: g for name, g in self._graphs.items() if isinstance(g, MicroBatcher)}

    @contextmanager
    def request(self, *, recognise: bool, poker_face: bool) -> Iterator[None]:
        """Announce one request to the batchers of the graphs it will call, for its lifetime,
        so that they wait for it (and only for it) when batching."""
        wanted = [RECOGNITION_GRAPH] * recognise + [POKER_FACE_GRAPH] * poker_face
        batchers = self.batchers
        with ExitStack() as stack:
            for name in wanted:
                if name in batchers:
                    stack.enter_context(batchers[name].expect())
            yield

    def recognise(self, faces: np.ndarray) -> RecognitionOutput:
        """``(B, H, W, 3) uint8`` aligned RGB faces -> logits and probabilities in label order."""
        if len(faces) == 0:
            k = len(self.card.labels)
            return RecognitionOutput(np.zeros((0, k), np.float32), np.zeros((0, k), np.float32))
        logits = self._run_batched(RECOGNITION_GRAPH, self._prepare(faces)).astype(np.float32)
        if logits.ndim != 2 or logits.shape[1] != len(self.card.labels):
            raise ModelLoadError(f"recognition graph returned logits of shape {logits.shape}")
        return RecognitionOutput(logits=logits, probabilities=softmax(logits))

    def poker_faces(self, faces: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3) uint8`` aligned RGB faces -> their poker faces, ``(B, H, W, 3) uint8`` RGB."""
        if not self.has_poker_face:
            raise CapabilityMissing(f"model {self.card.name!r} ships no poker-face graph")
        if len(faces) == 0:
            return np.zeros((0, *self.input_hw, 3), np.uint8)
        out = self._run_batched(POKER_FACE_GRAPH, self._prepare(faces))  # (B, 3, H, W) in [0, 1]
        images = to_uint8_images(out)
        return images[..., ::-1] if self._bgr else images

    def warm_up(self, runs: int = 2) -> None:
        """Run every graph on a mid-grey face so the first request pays no allocation cost,
        and check what each graph gives against the card (a graph with dynamic axes can only
        be checked by running it).

        Sessions are called directly so warm-up leaves the request metrics untouched.

        Raises:
            ModelLoadError: a graph fails to run, or answers with the wrong shape.
        """
        h, w = self.input_hw
        x = self._prepare(np.full((1, h, w, 3), 128, np.uint8))
        expected: dict[str, dict[str, tuple[int, ...]]] = {
            RECOGNITION_GRAPH: {"logits": (1, len(self.card.labels))},
            POKER_FACE_GRAPH: {"poker_face": (1, 3, h, w)},
        }
        for _ in range(max(1, runs)):
            for name, session in self.sessions.items():
                try:
                    outputs = session.run(None, {session.get_inputs()[0].name: x})
                except ORT_ERRORS as exc:
                    raise ModelLoadError(f"{self.card.name}: the {name} graph fails on a test face: {exc}") from exc
                by_name = {o.name: value for o, value in zip(session.get_outputs(), outputs)}
                for output, shape in expected.get(name, {}).items():
                    got = tuple(np.shape(by_name[output]))
                    if got != shape:
                        raise ModelLoadError(
                            f"{self.card.name}: the {name} graph answers {output} of shape {list(got)}, the "
                            "card implies "
                            f"{list(shape)} ({len(self.card.labels)} labels, {h}x{w} input)"
                        )
