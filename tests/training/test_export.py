"""Export: ONNX Runtime parity with torch, no generator in the recognition graph, a valid card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.card import load_card, verify_files
from tests.conftest import DEFAULT_MODEL_DIR
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
    logits, embedding = ort.InferenceSession(str(paths["recognition"]), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    with torch.no_grad():
        want_logits, want_embedding = model.recognise(torch.from_numpy(x))
    assert logits.shape == (3, 3) and embedding.shape == (3, model.config.embed_dim)
    assert np.abs(logits - want_logits.numpy()).max() <= 1e-4
    assert np.array_equal(logits.argmax(1), want_logits.numpy().argmax(1))
    (poker,) = ort.InferenceSession(str(paths["poker_face"]), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    assert poker.shape == (3, 3, 32, 32) and poker.min() >= 0 and poker.max() <= 1
    with torch.no_grad():
        assert np.abs(poker - model.poker_face(torch.from_numpy(x)).numpy()).mean() <= 1 / 255


def test_edit_mode_poker_face_and_export(tmp_path: Path) -> None:
    """ "edit" mode: poker = x + G(z_p + e_n) - G(z), in torch and in the exported graph."""
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
    (poker,) = ort.InferenceSession(str(out / "poker_face.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()}
    )
    assert np.abs(poker - want.numpy()).mean() <= 1 / 255


def test_fp16_export_is_served_unchanged(tmp_path: Path, astronaut_bytes: bytes) -> None:
    """``pfvit-export --fp16``: fp16 weights, float32 input and outputs, parity in the card, and
    the service loads it on the CPU and answers /v1/recognize with it."""
    import shutil

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from service.models import EmotionModel
    from tests.conftest import REPO, wait_ready
    from training.cli import export_main
    from training.fp16 import FP16_LOGIT_MAX_ABS, FP16_POKER_PSNR_DB, graph_precision

    torch.manual_seed(2)
    torch.set_num_threads(2)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS))).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    models = tmp_path / "models"
    export_main(
        [
            "--checkpoint",
            str(ckpt),
            "--out-dir",
            str(models / "fp32"),
            "--data",
            "synthetic:n=8",
            "--name",
            "micro-fp32",
        ]
    )
    export_main(
        [
            "--checkpoint",
            str(ckpt),
            "--out-dir",
            str(models / "fp16"),
            "--data",
            "synthetic:n=8",
            "--name",
            "micro-fp16",
            "--fp16",
        ]
    )

    card = load_card(models / "fp16")
    paths = verify_files(card, models / "fp16")
    assert {g: spec.precision for g, spec in card.graphs.items()} == {"recognition": "fp16", "poker_face": "fp16"}
    assert {spec.precision for spec in load_card(models / "fp32").graphs.values()} == {"fp32"}
    fp16 = card.training["parity"]["fp16"]
    assert fp16["samples"] == 8 and fp16["argmax_agreement"] == 1.0  # the exporter's sample batch
    assert (
        0 < fp16["logits_max_abs_diff"] <= FP16_LOGIT_MAX_ABS
        and fp16["logits_mean_abs_diff"] <= fp16["logits_max_abs_diff"]
    )
    assert fp16["poker_face_psnr_db"] >= FP16_POKER_PSNR_DB
    assert card.training["parity"]["logits_max_abs_diff"] <= 1e-4  # the fp32 graphs against torch, before conversion
    for path in paths.values():
        graph = onnx.load(str(path))
        assert graph_precision(path) == "fp16"
        assert {v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]} == {
            onnx.TensorProto.FLOAT
        }

    # The service's own sessions (CPU) on both exports: same logits within the fp16 tolerance.
    faces = (np.random.default_rng(0).random((5, 32, 32, 3)) * 255).astype(np.uint8)
    served = {
        p: EmotionModel.from_dir(models / p, providers=["CPUExecutionProvider"], intra_op_threads=1)
        for p in ("fp32", "fp16")
    }
    logits32, logits16 = (served[p].recognise(faces).logits for p in ("fp32", "fp16"))
    assert logits16.dtype == np.float32 and np.abs(logits16 - logits32).max() <= FP16_LOGIT_MAX_ABS
    assert np.abs(served["fp16"].poker_faces(faces).astype(int) - served["fp32"].poker_faces(faces)).max() <= 2

    shutil.copytree(REPO / "models" / "mtcnn", models / "mtcnn")
    settings = Settings(
        models_dir=models, emotion_model="fp16", providers="cpu", intra_op_threads=1, warmup_runs=1, _env_file=None
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        answer = client.post(
            "/v1/recognize?return_poker_face=true", files={"images": ("a.png", astronaut_bytes, "image/png")}
        )
        graphs = next(m for m in client.get("/v1/models").json()["models"] if m["kind"] == "emotion")["graphs"]
    assert answer.status_code == 200, answer.text
    (face,) = answer.json()["images"][0]["faces"]
    assert len(face["logits"]) == 3 and face["poker_face_png"]
    assert {g["precision"] for g in graphs.values()} == {"fp16"}
    assert all(g["providers"] == ["CPUExecutionProvider"] for g in graphs.values())


def test_fp16_parity_tool_on_a_folder_of_faces(tmp_path: Path, capsys) -> None:
    """tools/fp16_parity.py: the shipped model converted to fp16, over a folder of aligned crops."""
    from PIL import Image

    from tools.fp16_parity import main

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    status = main([str(DEFAULT_MODEL_DIR), "--faces", str(tmp_path), "--batch", "4", "--threads", "1"])
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["samples"] == 6 and report["logits_max_abs_diff"] <= 0.05 and report["poker_face_psnr_db"] >= 40
    assert status == (0 if report["passed"] else 1)


def test_greyscale_and_mirror_average_reach_the_recognition_graph(tmp_path: Path) -> None:
    """A greyscale model's recognition graph reads the luma of a colour upload, as training did,
    and ``mirror_average`` answers the mean over the face and its mirror image."""
    torch.manual_seed(2)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS), greyscale=True)).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    images = torch.rand(4, 3, model.config.image_size, model.config.image_size)  # colour, not grey
    plain, mirrored = tmp_path / "plain", tmp_path / "mirrored"
    export_checkpoint(ckpt, plain, images, poker_face=False)
    export_checkpoint(ckpt, mirrored, images, poker_face=False, mirror_average=True)
    assert load_card(mirrored).extra["recognition_mirror_average"] is True

    def logits(folder: Path, x01: torch.Tensor) -> np.ndarray:
        sess = ort.InferenceSession(str(folder / "recognition.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(["logits"], {"image": model.normalise(x01).numpy()})[0]

    luma = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).expand(-1, 3, -1, -1)
    np.testing.assert_allclose(logits(plain, images), logits(plain, luma), atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(logits(plain, images), model(model.normalise(images)).numpy(), atol=1e-4)
    np.testing.assert_allclose(
        logits(mirrored, images), 0.5 * (logits(plain, images) + logits(plain, images.flip(-1))), atol=1e-4
    )


def test_shifted_views_reach_the_recognition_graph(tmp_path: Path) -> None:
    """``shift_px``: the graph answers the mean over the face and its mirror image, each also
    moved by one pixel left, right, up and down with its edge repeated: ten views."""
    torch.manual_seed(4)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS), greyscale=True)).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    images = torch.rand(3, 3, model.config.image_size, model.config.image_size)
    plain, shifted = tmp_path / "plain", tmp_path / "shifted"
    export_checkpoint(ckpt, plain, images, poker_face=False)
    export_checkpoint(ckpt, shifted, images, poker_face=False, mirror_average=True, shift_px=1)
    assert load_card(shifted).extra["recognition_shift_px"] == 1

    def logits(folder: Path, x01: torch.Tensor) -> np.ndarray:
        sess = ort.InferenceSession(str(folder / "recognition.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(["logits"], {"image": model.normalise(x01).numpy()})[0]

    def moved(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """``x`` moved by (dy, dx) pixels, the edge row or column repeated into the gap."""
        rows = torch.arange(x.shape[-2]).add(dy).clamp(0, x.shape[-2] - 1)
        cols = torch.arange(x.shape[-1]).add(dx).clamp(0, x.shape[-1] - 1)
        return x[..., rows, :][..., cols]

    views = [
        moved(face, dy, dx)
        for face in (images, images.flip(-1))
        for dy, dx in ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))
    ]
    want = np.mean([logits(plain, v) for v in views], axis=0)
    np.testing.assert_allclose(logits(shifted, images), want, atol=1e-4)


def test_poker_luma_changes_every_channel_alike(tmp_path: Path) -> None:
    """``poker_luma``: the exported poker face differs from a colour input by the same amount in
    R, G and B (the luma of the generator's change); without it the channels differ."""
    torch.manual_seed(3)
    model = PFViT(PFViTConfig(**micro_overrides(), labels=list(TINY_LABELS), greyscale=True, poker_mode="edit")).eval()
    ckpt = save_checkpoint(tmp_path / "last.pt", TrainState(model), "train", TrainConfig(data="synthetic:n=8"))
    images = 0.25 + 0.5 * torch.rand(4, 3, model.config.image_size, model.config.image_size)  # away from the clamp

    def change(folder: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(folder / "poker_face.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(["poker_face"], {"image": model.normalise(images).numpy()})[0] - images.numpy()

    export_checkpoint(ckpt, tmp_path / "luma", images, poker_luma=True)
    export_checkpoint(ckpt, tmp_path / "colour", images)
    assert load_card(tmp_path / "luma").training["recipe"]["model_config"]["poker_luma"] is True
    luma, colour = change(tmp_path / "luma"), change(tmp_path / "colour")
    unclamped = lambda c: ((images.numpy() + c > 0.001) & (images.numpy() + c < 0.999)).all(1)  # noqa: E731  [N, H, W]
    inside = unclamped(luma) & unclamped(colour)
    assert np.abs(luma[:, 0] - luma[:, 1])[inside].max() < 1e-4 and np.abs(luma[:, 1] - luma[:, 2])[inside].max() < 1e-4
    assert np.abs(colour[:, 0] - colour[:, 2]).max() > 1e-3
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(
        luma[:, :1][inside[:, None]], (colour * weights).sum(1, keepdims=True)[inside[:, None]], atol=1e-4
    )
