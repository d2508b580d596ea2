"""fp16 graphs from fp32 ONNX exports, and how far they drift from the fp32 graphs.

:func:`convert_to_fp16` turns an exported graph's weights and arithmetic into float16 while its
input (``image``) and outputs (``logits``, ``embedding``, ``poker_face``) stay float32, so the
service feeds and reads an fp16 model exactly as an fp32 one: Cast nodes at the boundary do the
conversion inside the graph. The converter is onnxconverter-common's
``convert_float_to_float16(keep_io_types=True)``, with two repairs for what it gets wrong on our
graphs (see :func:`_repair`).

ONNX Runtime's CPU provider has no float16 kernel for MatMul, Gemm, Add, Sub, Mul, Div, Sqrt, Conv
and Einsum (ONNX Runtime 1.32, x86-64); it loads an fp16 graph all the same and runs those nodes
in float32 between Cast nodes it inserts itself (its ``InsertCastTransformer``), while
LayerNormalization, Softmax, Erf and Clip run in float16. So no operator has to be kept in
float32 for the graphs to load on the CPU; on CUDA every node of these graphs has a float16
kernel. :data:`FP16_OP_BLOCK_LIST` is therefore empty; an operator named there stays float32.

:func:`compare_graphs` measures an fp16 model folder against its fp32 twin on the same faces:
logits (max and mean absolute difference, argmax agreement) and poker faces (PSNR).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

# Operators kept in float32 in fp16 exports (none: see the module docstring).
FP16_OP_BLOCK_LIST: tuple[str, ...] = ()
# fp16 against fp32 ONNX Runtime on the same normalised faces. float16 keeps 11 significant bits
# (relative step 2**-11 = 4.9e-4); through a ViT the logits move by a few 1e-3 (the shipped
# micro model on the CPU: 7.8e-3 at most on 512 rendered faces, tools/fp16_parity.py).
FP16_LOGIT_MAX_ABS = 0.05
FP16_ARGMAX_AGREEMENT = 0.995  # over a test split; the exporter's sample batch is only a check
FP16_POKER_PSNR_DB = 40.0  # fp16 poker faces against fp32 poker faces, RGB in [0, 1]


def convert_to_fp16(src: str | Path, dst: str | Path, op_block_list: Iterable[str] = FP16_OP_BLOCK_LIST) -> Path:
    """Write the fp16 form of the ONNX graph ``src`` to ``dst`` (may be the same path).

    Weights and computation become float16; graph inputs and outputs stay float32.
    """
    from onnxconverter_common import float16  # the `train` extra; only fp16 export needs it

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        # It warns for every weight below float16's smallest normal number that it rounds to
        # 1e-7 (or to zero): expected, and measured in the parity figures.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(op_block_list) or None
        )
    _repair(converted)
    onnx.checker.check_model(converted)
    dst = Path(dst)
    onnx.save(converted, str(dst))
    return dst


def _repair(model: onnx.ModelProto) -> None:
    """Fix, in place, two things ``convert_float_to_float16`` leaves wrong in our graphs.

    1. A ``Cast(to=float)`` inside the graph (the attention scale, ``1/sqrt(head_dim)``, computed
       from a shape) keeps ``to=float`` while its consumers became float16: it must cast to
       float16.
    2. With ``keep_io_types``, a graph output that other nodes also read (``embedding``, read by
       the head) becomes the float32 Cast of a float16 tensor, and those readers are left on the
       float32 name: they must read the float16 tensor.
    """
    graph = model.graph
    value_types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        for attr in node.attribute:
            if (
                attr.name == "to"
                and attr.i == TensorProto.FLOAT
                and value_types.get(node.output[0]) == TensorProto.FLOAT16
            ):
                attr.i = TensorProto.FLOAT16
    outputs = {o.name for o in graph.output}
    fp16_source = {}  # graph output -> the float16 tensor its boundary Cast reads
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in outputs:
            fp16_source[node.output[0]] = node.input[0]
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in outputs:
            continue
        for i, name in enumerate(node.input):
            if name in fp16_source:
                node.input[i] = fp16_source[name]


def graph_precision(path: str | Path) -> str:
    """``"fp16"`` when the graph's weights are float16, ``"fp32"`` otherwise."""
    model = onnx.load(str(path), load_external_data=False)
    types = {t.data_type for t in model.graph.initializer if len(t.dims) > 1}
    return "fp16" if TensorProto.FLOAT16 in types and TensorProto.FLOAT not in types else "fp32"


def psnr_db_of_mse(mse: float) -> float:
    """PSNR of images in [0, 1] from their mean squared error; identical images read 200 dB
    (a finite number, so that it stays valid JSON in a card)."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-20))


class GraphPair:
    """The fp32 and fp16 sessions of one model on one provider, run on the same inputs."""

    def __init__(
        self, fp32_dir: str | Path, fp16_dir: str | Path, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions: dict[str, dict[str, ort.InferenceSession]] = {}
        for precision, folder in (("fp32", Path(fp32_dir)), ("fp16", Path(fp16_dir))):
            self.sessions[precision] = {
                name: ort.InferenceSession(str(folder / f"{name}.onnx"), opts, providers=providers)
                for name in ("recognition", "poker_face")
                if (folder / f"{name}.onnx").is_file()
            }
        self.has_poker_face = "poker_face" in self.sessions["fp32"] and "poker_face" in self.sessions["fp16"]

    def logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x``: ``(N, 3, H, W)`` float32, normalised. Returns fp32 and fp16 logits, ``(N, K)``."""
        return tuple(self.sessions[p]["recognition"].run(["logits"], {"image": x})[0] for p in ("fp32", "fp16"))

    def poker_faces(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fp32 and fp16 poker faces of ``x``, ``(N, 3, H, W)`` RGB in [0, 1]."""
        return tuple(self.sessions[p]["poker_face"].run(["poker_face"], {"image": x})[0] for p in ("fp32", "fp16"))


class ParityMeter:
    """Accumulates fp16-against-fp32 figures over batches."""

    def __init__(self) -> None:
        self.samples = 0
        self.agree = 0
        self.logit_max = 0.0
        self.logit_abs_sum = 0.0
        self.logit_count = 0
        self.poker_sq_sum = 0.0
        self.poker_count = 0

    def add_logits(self, fp32: np.ndarray, fp16: np.ndarray) -> None:
        diff = np.abs(fp16.astype(np.float64) - fp32)
        self.samples += len(fp32)
        self.agree += int((fp16.argmax(1) == fp32.argmax(1)).sum())
        self.logit_max = max(self.logit_max, float(diff.max(initial=0.0)))
        self.logit_abs_sum += float(diff.sum())
        self.logit_count += diff.size

    def add_poker_faces(self, fp32: np.ndarray, fp16: np.ndarray) -> None:
        self.poker_sq_sum += float(((fp16.astype(np.float64) - fp32) ** 2).sum())
        self.poker_count += fp32.size

    def report(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "samples": self.samples,
            "logits_max_abs_diff": self.logit_max,
            "logits_mean_abs_diff": self.logit_abs_sum / max(1, self.logit_count),
            "argmax_agreement": self.agree / max(1, self.samples),
        }
        if self.poker_count:
            mse = self.poker_sq_sum / self.poker_count
            out["poker_face_psnr_db"] = round(psnr_db_of_mse(mse), 2)
        return out


def compare_graphs(pair: GraphPair, batches: Iterable[np.ndarray]) -> dict[str, float | int]:
    """fp16 against fp32 over ``batches`` of normalised ``(N, 3, H, W)`` float32 faces."""
    meter = ParityMeter()
    for x in batches:
        meter.add_logits(*pair.logits(x))
        if pair.has_poker_face:
            meter.add_poker_faces(*pair.poker_faces(x))
    return meter.report()


def check_fp16_report(report: dict[str, float | int]) -> None:
    """Raise when the fp16 graphs drift beyond :data:`FP16_LOGIT_MAX_ABS` or under :data:`FP16_POKER_PSNR_DB`."""
    if report["logits_max_abs_diff"] > FP16_LOGIT_MAX_ABS:
        raise RuntimeError(
            f"fp16 logits differ from fp32 by {report['logits_max_abs_diff']:.3g} > {FP16_LOGIT_MAX_ABS}"
        )
    psnr = report.get("poker_face_psnr_db")
    if psnr is not None and psnr < FP16_POKER_PSNR_DB:
        raise RuntimeError(
            f"fp16 poker faces reach {psnr:.1f} dB PSNR against fp32, under the {FP16_POKER_PSNR_DB} dB floor"
        )
