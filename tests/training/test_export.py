"""Export: ONNX Runtime parity with torch, no generator in the recognition graph, a valid card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.card import load_card, verify_files
from tests.training.conftest import TINY_LABELS, micro_overrides, tiny_faces
from training.checkpoint import TrainState, save_checkpoint
from training.config import PFViTConfig, TrainConfig
from training.export import export_checkpoint
from training.model import PFViT


def test_export_parity_and_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    labels = list(TINY_LABELS)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=labels)).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"accuracy": 0.5, "macro_f1": 0.4, "data": "synthetic:n=8"}')
    ds = tiny_faces(5)
    images = torch.stack([ds[i]["image"] for i in range(5)])
    out = tmp_path / "model"
    result = export_checkpoint(ckpt, out, images, name="micro-test", metrics_path=metrics)
    assert result["parity"]["logits_max_abs_diff"] <= 1e-4

    card = load_card(out)
    paths = verify_files(card, out)
    assert set(paths) == {"recognition", "poker_face"}
    assert card.labels == labels and card.input.size == [32, 32] and card.training["metrics"]["accuracy"] == 0.5

    recognition = onnx.load(str(paths["recognition"]))
    assert recognition.opset_import[0].version >= 17
    names = {t.name for t in recognition.graph.initializer} | {n.name for n in recognition.graph.node}
    assert not any("generator" in n or "discriminator" in n for n in names)
    assert recognition.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # A batch size never seen at export time.
    x = model.normalise(images[:3]).numpy()
    logits, embedding = ort.InferenceSession(str(paths["recognition"]), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.no_grad():
        want_logits, want_embedding = model.recognise(torch.from_numpy(x))
    assert logits.shape == (3, 3) and embedding.shape == (3, model.config.embed_dim)
    assert np.abs(logits - want_logits.numpy()).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), want_logits.numpy().argmax(1))
    (poker,) = ort.InferenceSession(str(paths["poker_face"]), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert poker.shape == (3, 3, 32, 32) and poker.min() >= 0 and poker.max() <= 1
    with torch.no_grad():
        assert np.abs(poker - model.poker_face(torch.from_numpy(x)).numpy()).mean() <= 1 / 255


def test_edit_mode_poker_face_and_export(tmp_path: Path) -> None:
    """"edit" mode: poker = x + G(z_p + e_n) - G(z), in torch and in the exported graph."""
    torch.manual_seed(1)
    torch.set_num_threads(2)
    labels = list(TINY_LABELS)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=labels, poker_mode="edit")).eval()
    ds = tiny_faces(4)
    images = torch.stack([ds[i]["image"] for i in range(4)])
    x = model.normalise(images)
    with torch.no_grad():
        z = model.forward_features(x)
        _, z_p = model.separate(z)
        want = model.denormalise(x + model.generate(model.poker_tokens(z_p)) - model.generate(z))
        assert torch.allclose(model.poker_face(x), want, atol=1e-6)
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    out = tmp_path / "model"
    result = export_checkpoint(ckpt, out, images, name="micro-edit")
    assert result["parity"]["poker_face_mean_abs_diff"] <= 1 / 255
    (poker,) = ort.InferenceSession(str(out / "poker_face.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    assert np.abs(poker - want.numpy()).mean() <= 1 / 255
