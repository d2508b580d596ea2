"""Loaded models: the PF-ViT emotion model (recognition + poker-face graphs) and the detector.

A model's life: verify its card and checksums, create sessions, check that the sessions
match the card (inputs, outputs, label count), warm up, then serve. Only after every model
has been warmed up does the service report ready.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service import metrics
from service.batching import MicroBatcher
from service.card import POKER_FACE_GRAPH, RECOGNITION_GRAPH, ModelCard, load_card, verify_files
from service.errors import CapabilityMissing, ModelLoadError
from service.runtime import ORT_ERRORS, ProviderOptions, create_session, device_of, primary_provider
from service.vision.align import normalise, to_uint8_images

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

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


class EmotionModel:
    """A PF-ViT emotion model exported to ONNX: recognition graph, optional poker-face graph.

    Faces come in aligned, as ``(B, H, W, 3) uint8`` RGB at the card's input size.
    """

    def __init__(
        self,
        card: ModelCard,
        sessions: dict[str, InferenceSession],
        max_batch: int = 64,
        batch_wait_s: float | None = None,
        device_id: int = 0,
    ) -> None:
        """``batch_wait_s``: None runs each call on its own; a number batches concurrent calls
        of each graph (``service.batching.MicroBatcher``), waiting at most that long.
        ``device_id``: the GPU of sessions that run on one (``PFVIT_CUDA_DEVICE_ID``)."""
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
        self.batchers: dict[str, MicroBatcher] = {}
        if batch_wait_s is not None:
            self.batchers = {
                name: MicroBatcher(
                    partial(self._run_graph, name), name=name, max_faces=max_batch, max_wait_s=batch_wait_s
                )
                for name in self.sessions
            }

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        max_batch: int = 64,
        batch_wait_s: float | None = None,
        cpu_arena: bool = False,
    ) -> EmotionModel:
        """Read the card, verify every checksum, and load the graphs."""
        card = load_card(model_dir)
        if card.kind != "emotion":
            raise ModelLoadError(f"{model_dir} holds a {card.kind!r} model, not an emotion model")
        return cls.from_verified(
            card,
            verify_files(card, model_dir),
            providers=providers,
            intra_op_threads=intra_op_threads,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
            cpu_arena=cpu_arena,
        )

    @classmethod
    def from_verified(
        cls,
        card: ModelCard,
        paths: dict[str, Path],
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        max_batch: int = 64,
        batch_wait_s: float | None = None,
        cpu_arena: bool = False,
        required_provider: str | None = None,
        provider_options: ProviderOptions | None = None,
    ) -> EmotionModel:
        """Load graphs whose checksums were already verified (``verify_files``' answer)."""
        sessions = {
            name: create_session(
                path,
                providers=providers,
                intra_op_threads=intra_op_threads,
                cpu_arena=cpu_arena,
                required=required_provider,
                provider_options=provider_options,
            )
            for name, path in paths.items()
        }
        device_id = provider_options.cuda_device_id if provider_options is not None else 0
        return cls(card, sessions, max_batch=max_batch, batch_wait_s=batch_wait_s, device_id=device_id)

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

    def _run_batched(self, graph: str, x: np.ndarray) -> np.ndarray:
        batcher = self.batchers.get(graph)
        if batcher is not None:
            return batcher(x)  # shares a call with concurrent requests, in chunks of max_batch
        parts = [
            self._run_graph(graph, x[start : start + self.max_batch]) for start in range(0, x.shape[0], self.max_batch)
        ]
        return np.concatenate(parts, axis=0)

    @contextmanager
    def request(self, *, recognise: bool, poker_face: bool) -> Iterator[None]:
        """Announce one request to the batchers of the graphs it will call, for its lifetime,
        so that they wait for it (and only for it) when batching."""
        wanted = [RECOGNITION_GRAPH] * recognise + [POKER_FACE_GRAPH] * poker_face
        with ExitStack() as stack:
            for name in wanted:
                if name in self.batchers:
                    stack.enter_context(self.batchers[name].expect())
            yield

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()

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
