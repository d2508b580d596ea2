"""ONNX export of a PF-ViT checkpoint into a model folder the service can load.

Writes ``recognition.onnx`` (E + S_e + H; the generator is not in it), optionally
``poker_face.onnx`` (E + S_p + G, or E + S + the expression editor for an "editor" model;
de-normalised and clamped to [0, 1]), checks ONNX Runtime
against torch on real inputs, then writes ``card.json`` with :func:`service.card.write_card`.
With ``fp16``, the checked fp32 graphs are converted to fp16 (:mod:`training.fp16`) and the
fp16 graphs checked against them; the card records each graph's precision and both checks.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from service.card import GraphSpec, InputSpec, ModelCard, TensorSpec, sha256_file, write_card
from training.checkpoint import model_from_checkpoint
from training.fp16 import (
    FP16_LOGIT_MAX_ABS,
    FP16_POKER_PSNR_DB,
    GraphPair,
    check_fp16_report,
    compare_graphs,
    convert_to_fp16,
)
from training.model import PFViT

RECOGNITION_FILE = "recognition.onnx"
POKER_FACE_FILE = "poker_face.onnx"
LOGIT_TOLERANCE = 1e-4
MIRROR_NOTE = ", mean over the face and its mirror image"
POKER_FACE_TOLERANCE = 1.0 / 255.0


def shift_note(shift_px: int) -> str:
    return f", and over views shifted by {shift_px} px" if shift_px else ""


class RecognitionGraph(nn.Module):
    """``image`` (normalised) -> ``(logits, embedding)``: :meth:`PFViT.recognise`, so the graph
    computes exactly what training evaluated (the grey step of a greyscale model included). Only
    the weights recognition uses are traced: the generator is not in the graph (tested).

    Test-time augmentation in the graph itself: with ``mirror_average``, both outputs are the
    mean over the face and its mirror image (the aligned face's left-right flip, which the
    template keeps a face), at twice the recognition cost; with ``shift_px`` above 0, also over
    the face moved by that many pixels left, right, up and down (edges repeated), five times the
    cost again. Alignment puts a face within a pixel or two of the template; the shifted views
    average that error out.
    """

    def __init__(self, model: PFViT, mirror_average: bool = False, shift_px: int = 0) -> None:
        super().__init__()
        self.model = model
        self.mirror_average = mirror_average
        self.shift_px = shift_px

    def views(self, image: torch.Tensor) -> list[torch.Tensor]:
        faces = [image, image.flip(-1)] if self.mirror_average else [image]
        s = self.shift_px
        if s <= 0:
            return faces
        h, w = image.shape[-2:]
        out = []
        for face in faces:
            padded = F.pad(face, (s, s, s, s), mode="replicate")
            out.append(face)
            out += [
                padded[..., s + dy : s + dy + h, s + dx : s + dx + w] for dy, dx in ((0, s), (0, -s), (s, 0), (-s, 0))
            ]
        return out

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [self.model.recognise(view) for view in self.views(image)]
        if len(outputs) == 1:
            return outputs[0]
        logits = torch.stack([o[0] for o in outputs]).mean(0)
        embedding = torch.stack([o[1] for o in outputs]).mean(0)
        return logits, embedding


class PokerFaceGraph(nn.Module):
    """``image`` (normalised) -> ``poker_face`` RGB in [0, 1]."""

    def __init__(self, model: PFViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.poker_face(image)


def freeze_for_export(model: PFViT) -> PFViT:
    """A copy whose orthogonal parametrisation is baked into a plain weight.

    The parametrisation (``matrix_exp`` of a skew-symmetric matrix) has no ONNX form here, and
    its value is all the graph needs.
    """
    frozen = copy.deepcopy(model).eval()
    parametrize.remove_parametrizations(frozen.separator.basis, "weight", leave_parametrized=True)
    return frozen


def _export(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], opset: int) -> None:
    dynamic = {"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    # The classic TorchScript exporter, chosen on purpose (one self-contained file, stable dynamic
    # batch axes), so its deprecation notice is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(graph)
    external = [t.name for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"{path.name} stores tensors outside the file: {external[:3]}")


def check_parity(
    model: PFViT,
    model_dir: Path,
    images01: torch.Tensor,
    poker_face: bool,
    mirror_average: bool = False,
    shift_px: int = 0,
) -> dict[str, float]:
    """Run ONNX Runtime and torch on the same images; raise if they disagree beyond tolerance.

    The images are checked as given and tinted (each channel scaled differently), so that a
    colour input is checked too when the samples are grey photos.

    Args:
        model: the frozen export model.
        model_dir: folder with the exported graphs.
        images01: ``[N, 3, H, W]`` RGB in [0, 1] (real faces where available).
        poker_face: also check ``poker_face.onnx``.
        mirror_average, shift_px: the recognition graph's test-time augmentation
            (:class:`RecognitionGraph`).

    Returns:
        ``{"logits_max_abs_diff", "embedding_max_abs_diff", "poker_face_mean_abs_diff"}``.
    """
    import onnxruntime as ort  # imported here: only export needs it on the training side

    images01 = images01.float()
    tinted = images01 * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    x = model.normalise(torch.cat([images01, tinted]))
    feed = {"image": x.numpy()}
    with torch.no_grad():
        logits, embedding = RecognitionGraph(model, mirror_average, shift_px).eval()(x)
    sess = ort.InferenceSession(str(model_dir / RECOGNITION_FILE), providers=["CPUExecutionProvider"])
    ort_logits, ort_embedding = sess.run(["logits", "embedding"], feed)
    report = {
        "logits_max_abs_diff": float(np.abs(ort_logits - logits.numpy()).max()),
        "embedding_max_abs_diff": float(np.abs(ort_embedding - embedding.numpy()).max()),
    }
    if report["logits_max_abs_diff"] > LOGIT_TOLERANCE:
        raise RuntimeError(f"recognition logits differ by {report['logits_max_abs_diff']:.2e} > {LOGIT_TOLERANCE}")
    if not np.array_equal(ort_logits.argmax(1), logits.numpy().argmax(1)):
        raise RuntimeError("recognition argmax differs between ONNX Runtime and torch")
    if poker_face:
        with torch.no_grad():
            poker = model.poker_face(x).numpy()
        sess = ort.InferenceSession(str(model_dir / POKER_FACE_FILE), providers=["CPUExecutionProvider"])
        (ort_poker,) = sess.run(["poker_face"], feed)
        report["poker_face_mean_abs_diff"] = float(np.abs(ort_poker - poker).mean())
        if report["poker_face_mean_abs_diff"] > POKER_FACE_TOLERANCE:
            raise RuntimeError(f"poker faces differ by {report['poker_face_mean_abs_diff']:.2e} > 1/255 on average")
    return report


def _convert_and_check_fp16(out: Path, x: np.ndarray, poker_face: bool) -> dict[str, Any]:
    """Replace the fp32 graphs in ``out`` by fp16 ones and measure them against the fp32 graphs
    on ``x`` (normalised ``[N, 3, H, W]``); raise beyond the tolerances."""
    files = [RECOGNITION_FILE] + [POKER_FACE_FILE] * poker_face
    with tempfile.TemporaryDirectory(prefix="pfvit-fp32-") as tmp:
        for file in files:
            shutil.copyfile(out / file, Path(tmp) / file)
            convert_to_fp16(Path(tmp) / file, out / file)
        report: dict[str, Any] = compare_graphs(GraphPair(tmp, out), [x])
    report["tolerance"] = {
        "logits_max_abs_diff": FP16_LOGIT_MAX_ABS,
        **({"poker_face_psnr_db_min": FP16_POKER_PSNR_DB} if poker_face else {}),
    }
    check_fp16_report(report)
    return report


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    sample_images01: torch.Tensor,
    name: str = "pfvit",
    version: str = "0.1.0",
    license: str = "MIT",
    description: str = "",
    metrics_path: str | Path | None = None,
    opset: int = 17,
    poker_face: bool = True,
    fp16: bool = False,
    mirror_average: bool = False,
    poker_luma: bool = False,
    shift_px: int = 0,
) -> dict[str, Any]:
    """Export a checkpoint to ``out_dir`` (graphs + card) and verify it.

    Args:
        checkpoint: PF-ViT checkpoint (its config rebuilds the model).
        out_dir: model folder.
        sample_images01: ``[N, 3, H, W]`` RGB in [0, 1] for the export trace and the parity check.
        name, version, license, description: card fields.
        metrics_path: evaluation ``metrics.json`` whose numbers go into the card.
        opset: ONNX opset, 17 or later.
        poker_face: also export ``poker_face.onnx``.
        fp16: write fp16 graphs (float32 input and outputs); raises when they drift from the
            fp32 graphs beyond ``training.fp16``'s tolerances on ``sample_images01``.
        mirror_average: the recognition graph answers the mean over each face and its mirror
            image (:class:`RecognitionGraph`).
        shift_px: the recognition graph also averages views of each face shifted by this many
            pixels (:class:`RecognitionGraph`).
        poker_luma: the poker-face graph applies only the luma of the generator's change
            (``PFViTConfig.poker_luma``; "edit" mode); the card's model config records it.

    Returns:
        ``{"card": path, "parity": {...}}``; with ``fp16``, ``parity["fp16"]`` holds the fp16
        graphs' figures against the fp32 graphs (logit differences, argmax agreement, poker-face
        PSNR) and the tolerances they were held to.
    """
    if opset < 17:
        raise ValueError(f"opset must be 17 or later, got {opset}")
    model, payload = model_from_checkpoint(checkpoint)
    if not model.config.labels:
        raise ValueError("the checkpoint has no labels (a pre-training checkpoint?); export a trained one")
    if poker_luma:
        model.config = replace(model.config, poker_luma=True)  # validated: "edit" mode only
    model = freeze_for_export(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    example = model.normalise(sample_images01[:2].float())
    with torch.no_grad():
        _export(
            RecognitionGraph(model, mirror_average, shift_px).eval(),
            example,
            out / RECOGNITION_FILE,
            ["logits", "embedding"],
            opset,
        )
        if poker_face:
            _export(PokerFaceGraph(model).eval(), example, out / POKER_FACE_FILE, ["poker_face"], opset)
    parity: dict[str, Any] = dict(check_parity(model, out, sample_images01, poker_face, mirror_average, shift_px))
    precision = "fp32"
    if fp16:
        parity["fp16"] = _convert_and_check_fp16(out, model.normalise(sample_images01.float()).numpy(), poker_face)
        precision = "fp16"

    image_spec = TensorSpec(
        "image",
        ["batch", 3, c.image_size, c.image_size],
        "float32",
        "aligned face, normalised with input.mean/std, RGB",
    )
    graphs = {
        "recognition": GraphSpec(
            file=RECOGNITION_FILE,
            sha256=sha256_file(out / RECOGNITION_FILE),
            inputs=[image_spec],
            precision=precision,
            outputs=[
                TensorSpec(
                    "logits",
                    ["batch", c.num_classes],
                    "float32",
                    "class logits in label order" + MIRROR_NOTE * mirror_average + shift_note(shift_px),
                ),
                TensorSpec(
                    "embedding",
                    ["batch", c.embed_dim],
                    "float32",
                    "pooled emotional component z_e" + MIRROR_NOTE * mirror_average + shift_note(shift_px),
                ),
            ],
        ),
    }
    if poker_face:
        graphs["poker_face"] = GraphSpec(
            file=POKER_FACE_FILE,
            sha256=sha256_file(out / POKER_FACE_FILE),
            inputs=[image_spec],
            precision=precision,
            outputs=[TensorSpec("poker_face", ["batch", 3, c.image_size, c.image_size], "float32", "RGB in [0, 1]")],
        )
    stage_cfg = payload.get("stage_config", {})
    training: dict[str, Any] = {
        "data": stage_cfg.get("data", ""),
        "recipe": {
            "stage": payload.get("stage"),
            "epochs": payload.get("epoch"),
            "steps": payload.get("step"),
            "model_config": c.to_dict(),
            "stage_config": stage_cfg,
        },
        "parity": parity,
    }
    if metrics_path:
        metrics = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
        training["metrics"] = {
            k: metrics[k]
            for k in ("accuracy", "macro_f1", "mean_class_accuracy", "per_class_accuracy", "num_samples")
            if k in metrics
        }
        training["evaluation_data"] = metrics.get("data", "")
    card = ModelCard(
        name=name,
        version=version,
        kind="emotion",
        graphs=graphs,
        labels=list(c.labels),
        input=InputSpec(size=[c.image_size, c.image_size], mean=list(c.mean), std=list(c.std)),
        description=description or "PF-ViT facial-expression recognition and poker-face generation",
        license=license,
        training=training,
        extra={
            "opset": opset,
            "recognition_mirror_average": mirror_average,
            "recognition_shift_px": shift_px,
            "params_recognition": model.num_params("recognition"),
            "params_generator": model.num_params("generator"),
            "params_editor": model.num_params("editor"),
        },
    )
    return {"card": str(write_card(card, out)), "parity": parity}
