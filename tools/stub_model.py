"""A small hand-built ONNX emotion model with the exported PF-ViT graphs' inputs and outputs.

It lets the service tests (and ``tools/bench_service.py --stub``) run real ONNX Runtime
sessions with a known answer:
- recognition: logits = mean colour of the normalised face (N, 3) @ W + b, embedding = mean colour;
- poker_face: the face itself, de-normalised back to [0, 1] (so the served PNG must equal
  the aligned crop up to rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.card import GraphSpec, InputSpec, ModelCard, TensorSpec, sha256_file, write_card

LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]
# Each label reacts to the mean colour differently: rows = R, G, B.
WEIGHTS = np.array(
    [
        [0.0, 2.0, -1.0, 0.5, 1.5, -0.5, 0.2, -2.0],
        [0.0, -1.0, 2.0, 0.5, -1.5, 1.0, 0.1, 0.3],
        [0.0, 0.5, -0.5, 2.0, 0.2, -1.0, 1.2, 0.1],
    ],
    dtype=np.float32,
)
BIAS = np.linspace(-0.3, 0.4, len(LABELS)).astype(np.float32)


def _image_input(size: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])


def recognition_graph(size: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1),
        helper.make_node("MatMul", ["embedding", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stub_recognition",
        [_image_input(size)],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def poker_face_graph(size: int) -> onnx.ModelProto:
    std = np.array(STD, np.float32).reshape(1, 3, 1, 1)
    mean = np.array(MEAN, np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Mul", ["image", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "lo", "hi"], ["poker_face"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stub_poker_face",
        [_image_input(size)],
        [helper.make_tensor_value_info("poker_face", TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=[
            numpy_helper.from_array(std, "std"),
            numpy_helper.from_array(mean, "mean"),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def write_stub_model(
    model_dir: Path, *, size: int = 112, name: str = "stub-emotion", with_poker_face: bool = True
) -> ModelCard:
    model_dir.mkdir(parents=True, exist_ok=True)
    image_spec = TensorSpec(name="image", shape=["batch", 3, size, size])
    graphs = {}
    onnx.save(recognition_graph(size), model_dir / "recognition.onnx")
    graphs["recognition"] = GraphSpec(
        file="recognition.onnx",
        sha256=sha256_file(model_dir / "recognition.onnx"),
        inputs=[image_spec],
        outputs=[TensorSpec("logits", ["batch", len(LABELS)]), TensorSpec("embedding", ["batch", 3])],
    )
    if with_poker_face:
        onnx.save(poker_face_graph(size), model_dir / "poker_face.onnx")
        graphs["poker_face"] = GraphSpec(
            file="poker_face.onnx",
            sha256=sha256_file(model_dir / "poker_face.onnx"),
            inputs=[image_spec],
            outputs=[TensorSpec("poker_face", ["batch", 3, size, size])],
        )
    card = ModelCard(
        name=name,
        version="0.0.1-test",
        kind="emotion",
        graphs=graphs,
        labels=list(LABELS),
        input=InputSpec(size=[size, size], mean=list(MEAN), std=list(STD)),
        description="Hand-built test model: mean colour -> logits, identity poker face.",
        training={"data": "none (hand-set weights)", "metrics": {}},
    )
    write_card(card, model_dir)
    return card


def expected_logits(aligned_faces: np.ndarray) -> np.ndarray:
    """What the stub's recognition graph must return for ``(B, H, W, 3) uint8`` faces."""
    x = (aligned_faces.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.mean(axis=(1, 2)) @ WEIGHTS + BIAS
