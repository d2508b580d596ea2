"""Convert facenet-pytorch's MTCNN weights (P-Net, R-Net, O-Net) to ONNX for the service.

Rerunnable: ``python tools/convert_mtcnn.py [--out models/mtcnn]``. It needs torch, onnx and
onnxruntime, plus the facenet-pytorch wheel *installed with --no-deps* (only its data files
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` are read; the package itself is never imported,
because importing it pulls in torchvision, which cannot be installed here).

The three networks are written out below layer for layer as facenet-pytorch 2.6.0 defines them
(same attribute names, so the state dicts load with ``strict=True``). Each graph is exported,
checked against torch on random inputs with ONNX Runtime, and recorded with its sha256 in
``models/mtcnn/card.json`` (``service.card``, kind ``"detector"``).

The three networks are exported in equivalent, faster forms (:func:`fast_form`): each first
PReLU after its pool (:class:`PoolThenPReLU`), with that convolution's outputs padded to whole
blocks of ONNX Runtime's blocked layout; P-Net's second PReLU, and R-Net's and O-Net's further
ones, as per-channel scales and a ReLU (:class:`SplitPReLU`); P-Net's last folded into its
heads, whose two-class softmax becomes a sigmoid (:class:`PNetHead`). The check compares each
graph with facenet-pytorch's plain layers (docs/benchmarks.md has the timings).

Graph contracts (all float32, NCHW, RGB, pixels normalised as ``(x - 127.5) * 0.0078125``):

- ``pnet``: ``image [batch, 3, height, width]`` -> ``reg [batch, 4, h', w']``,
  ``prob [batch, 2, h', w']`` with ``h' = ceil((height - 2) / 2) - 4`` (fully convolutional).
- ``rnet``: ``image [batch, 3, 24, 24]`` -> ``reg [batch, 4]``, ``prob [batch, 2]``.
- ``onet``: ``image [batch, 3, 48, 48]`` -> ``reg [batch, 4]``, ``landmarks [batch, 10]``
  (5 x then 5 y, relative to the box), ``prob [batch, 2]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from service.card import GraphSpec, ModelCard, TensorSpec, sha256_file, write_card  # noqa: E402
from service.vision.mtcnn import DEFAULT_FACTOR, DEFAULT_MIN_FACE_SIZE, DEFAULT_THRESHOLDS  # noqa: E402

OPSET = 17
FACENET_VERSION = "2.6.0"
MAX_ABS_DIFF = 1e-4  # float32 conv stacks this shallow agree far tighter than this


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, 3, H, W]
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))  # [B, 32, h', w']
        prob = self.softmax4_1(self.conv4_1(x))  # [B, 2, h', w'], channel 1 = face
        reg = self.conv4_2(x)  # [B, 4, h', w']
        return reg, prob


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, 3, 24, 24]
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # [B, 64, 3, 3]
        # The weights came from Caffe via TensorFlow, whose flatten order is (W, H, C):
        # facenet-pytorch permutes before the dense layer, and so must we.
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # [B, 576]
        x = self.prelu4(self.dense4(x))
        prob = self.softmax5_1(self.dense5_1(x))  # [B, 2]
        reg = self.dense5_2(x)  # [B, 4]
        return reg, prob


class ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # x: [B, 3, 48, 48]
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # [B, 128, 3, 3]
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # [B, 1152], (W, H, C) order as above
        x = self.prelu5(self.dense5(x))
        prob = self.softmax6_1(self.dense6_1(x))  # [B, 2]
        reg = self.dense6_2(x)  # [B, 4]
        landmarks = self.dense6_3(x)  # [B, 10]: x1..x5, y1..y5
        return reg, landmarks, prob


class SplitPReLU(nn.Module):
    """``prelu(y)`` written as ``a y + (1 - a) relu(y)``: per-channel scales, a ReLU and a sum,
    which ONNX Runtime keeps in its blocked NCHWc layout between convolutions (it has no NCHWc
    PReLU, and converts layouts around one)."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        slopes = prelu.weight.detach().view(1, -1, 1, 1)
        self.register_buffer("slope", slopes.clone())
        self.register_buffer("rest", (1 - slopes).clone())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.slope * y + self.rest * torch.relu(y)


class PoolThenPReLU(nn.Module):
    """``pool(prelu(conv(x)))`` computed with the PReLU after the pool, where its tensor is a
    quarter of the size (the same numbers, to rounding).

    A PReLU is piecewise linear with one kink, so over a pooling window its maximum is its value
    at the window's largest or smallest input: ``max(prelu(max y), prelu(min y))``. With a
    slope a >= 0 it never decreases, and ``prelu(max y)`` alone is the answer. With a < 0 the
    smallest input can win, with ``|a| * relu(-min y)``; so the convolution also computes ``-y``
    for those channels (its weights negated), the pool gives ``max(-y) = -min y``, and a 1x1
    convolution spreads ``|a| * relu(.)`` back onto their channels (a bias of -1e30 on the
    others, which the max then ignores).

    Why: ONNX Runtime runs these convolutions and pools in its blocked NCHWc layout but has no
    NCHWc PReLU, so a full-size PReLU costs a layout round trip and a pass over the largest
    tensor of the network (P-Net's PReLUs took 31 % of its time on a 1280 px photo's pyramid:
    ``tools/profile_pnet.py``, docs/benchmarks.md).

    ``block``: the convolution's outputs are padded with zero filters to a multiple of it. ONNX
    Runtime pools in the blocked layout only whole blocks of channels (16 floats with AVX-512, 8
    with AVX2); R-Net's 28 + 9 outputs pooled in the plain layout, with a layout conversion
    each way, until padded to 48. The padding channels pool zeros that the spread ignores.
    """

    def __init__(self, conv: nn.Conv2d, prelu: nn.PReLU, pool: nn.MaxPool2d, block: int = 16) -> None:
        super().__init__()
        slopes = prelu.weight.detach().flatten()
        neg = torch.nonzero(slopes < 0).flatten()
        self.channels, self.extra = slopes.numel(), int(neg.numel())
        padding = -(self.channels + self.extra) % block
        outputs = self.channels + self.extra + padding
        self.conv = nn.Conv2d(conv.in_channels, outputs, conv.kernel_size, conv.stride)
        self.prelu = SplitPReLU(prelu)
        self.pool = pool
        self.spread = nn.Conv2d(outputs - self.channels, self.channels, 1) if self.extra else None
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[: self.channels + self.extra] = torch.cat([conv.weight, -conv.weight[neg]])
            self.conv.bias[: self.channels + self.extra] = torch.cat([conv.bias, -conv.bias[neg]])
            if self.spread is not None:
                self.spread.weight.zero_()
                self.spread.weight[neg, torch.arange(self.extra), 0, 0] = -slopes[neg]
                self.spread.bias.fill_(-1e30)
                self.spread.bias[neg] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.conv(x))  # [B, C + n + pad, h, w]: max of y, then of -y on the n channels, then zeros
        out = self.prelu(pooled[:, : self.channels])
        if self.spread is None:
            return out
        return torch.maximum(out, self.spread(torch.relu(pooled[:, self.channels :])))


class PNetHead(nn.Module):
    """P-Net's last PReLU and its two 1x1 heads in one, for a conv3 output ``y``.

    ``prelu(y) = a y + (1 - a) relu(y)`` per channel, and a 1x1 convolution is linear, so the
    heads of ``prelu(y)`` are two 1x1 convolutions, of ``y`` and of ``relu(y)``, added: no
    PReLU over the largest output map. A two-class softmax is the sigmoid of the logit
    difference, so the face score needs one output channel, not a softmax across two (ONNX
    Runtime's channel softmax on a 4-D map cost as much as conv3).
    """

    def __init__(self, prelu: nn.PReLU, conv_prob: nn.Conv2d, conv_reg: nn.Conv2d) -> None:
        super().__init__()
        slopes = prelu.weight.detach().view(1, -1, 1, 1)
        weight = torch.cat([conv_prob.weight[1:] - conv_prob.weight[:1], conv_reg.weight]).detach()  # [5, 32, 1, 1]
        self.linear = nn.Conv2d(weight.shape[1], 5, 1)
        self.rectified = nn.Conv2d(weight.shape[1], 5, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight * slopes)
            self.linear.bias.copy_(torch.cat([conv_prob.bias[1:] - conv_prob.bias[:1], conv_reg.bias]))
            self.rectified.weight.copy_(weight * (1 - slopes))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.linear(y) + self.rectified(torch.relu(y))  # [B, 5, h', w']: face logit margin, 4 offsets
        margin = out[:, :1]
        return out[:, 1:], torch.cat([torch.sigmoid(-margin), torch.sigmoid(margin)], dim=1)


class FastPNet(nn.Module):
    """P-Net as exported: :class:`PNet`'s weights, the same outputs, cheaper operators."""

    def __init__(self, net: PNet) -> None:
        super().__init__()
        self.block1 = PoolThenPReLU(net.conv1, net.prelu1, net.pool1)
        self.conv2, self.prelu2 = net.conv2, SplitPReLU(net.prelu2)
        self.conv3 = net.conv3
        self.head = PNetHead(net.prelu3, net.conv4_1, net.conv4_2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu2(self.conv2(self.block1(x)))
        return self.head(self.conv3(x))  # reg [B, 4, h', w'], prob [B, 2, h', w']


class FastRNet(nn.Module):
    """R-Net as exported: :class:`RNet`'s weights, the same outputs, cheaper operators. Its
    first PReLU runs after the pool; the others as scales and a ReLU, which stay in the blocked
    layout (the second before its pool: after it, its negative slopes would need the extra
    channels of :class:`PoolThenPReLU`, and conv2's 48 + 3 outputs a fourth block)."""

    def __init__(self, net: RNet) -> None:
        super().__init__()
        self.net = net
        self.block1 = PoolThenPReLU(net.conv1, net.prelu1, net.pool1)
        self.prelu2, self.prelu3 = SplitPReLU(net.prelu2), SplitPReLU(net.prelu3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.pool2(self.prelu2(n.conv2(self.block1(x))))
        x = self.prelu3(n.conv3(x))  # [B, 64, 3, 3]
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # (W, H, C) order, as RNet.forward
        x = n.prelu4(n.dense4(x))
        return n.dense5_2(x), n.softmax5_1(n.dense5_1(x))


class FastONet(nn.Module):
    """O-Net as exported: :class:`ONet`'s weights, the same outputs, cheaper operators (its
    convolutions' PReLUs as in :class:`FastRNet`)."""

    def __init__(self, net: ONet) -> None:
        super().__init__()
        self.net = net
        self.block1 = PoolThenPReLU(net.conv1, net.prelu1, net.pool1)
        self.prelu2, self.prelu3, self.prelu4 = SplitPReLU(net.prelu2), SplitPReLU(net.prelu3), SplitPReLU(net.prelu4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.pool2(self.prelu2(n.conv2(self.block1(x))))
        x = n.pool3(self.prelu3(n.conv3(x)))
        x = self.prelu4(n.conv4(x))  # [B, 128, 3, 3]
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # (W, H, C) order, as ONet.forward
        x = n.prelu5(n.dense5(x))
        return n.dense6_2(x), n.dense6_3(x), n.softmax6_1(n.dense6_1(x))


_FAST_FORMS: dict[str, type[nn.Module]] = {"pnet": FastPNet, "rnet": FastRNet, "onet": FastONet}


def fast_form(name: str, net: nn.Module) -> nn.Module:
    """The module exported for graph ``name`` (the check compares the export with ``net``
    itself, facenet-pytorch's plain layers)."""
    return _FAST_FORMS[name](net).eval()


# name -> (module class, example input shape, input spec, output specs, dynamic axes)
_IMAGE_DOC = "RGB, (x - 127.5) * 0.0078125, NCHW"
GRAPHS: dict[str, tuple[type[nn.Module], tuple[int, ...], TensorSpec, list[TensorSpec], dict]] = {
    "pnet": (
        PNet,
        (1, 3, 64, 80),
        TensorSpec("image", ["batch", 3, "height", "width"], description=_IMAGE_DOC),
        [
            TensorSpec("reg", ["batch", 4, "grid_h", "grid_w"], description="box offsets per 12px cell, stride 2"),
            TensorSpec("prob", ["batch", 2, "grid_h", "grid_w"], description="softmax; channel 1 = face"),
        ],
        {
            "image": {0: "batch", 2: "height", 3: "width"},
            "reg": {0: "batch", 2: "grid_h", 3: "grid_w"},
            "prob": {0: "batch", 2: "grid_h", 3: "grid_w"},
        },
    ),
    "rnet": (
        RNet,
        (2, 3, 24, 24),
        TensorSpec("image", ["batch", 3, 24, 24], description=_IMAGE_DOC),
        [
            TensorSpec("reg", ["batch", 4], description="box offsets, fraction of box size"),
            TensorSpec("prob", ["batch", 2], description="softmax; column 1 = face"),
        ],
        {"image": {0: "batch"}, "reg": {0: "batch"}, "prob": {0: "batch"}},
    ),
    "onet": (
        ONet,
        (2, 3, 48, 48),
        TensorSpec("image", ["batch", 3, 48, 48], description=_IMAGE_DOC),
        [
            TensorSpec("reg", ["batch", 4], description="box offsets, fraction of box size"),
            TensorSpec("landmarks", ["batch", 10], description="x1..x5 then y1..y5, fraction of box size"),
            TensorSpec("prob", ["batch", 2], description="softmax; column 1 = face"),
        ],
        {"image": {0: "batch"}, "reg": {0: "batch"}, "landmarks": {0: "batch"}, "prob": {0: "batch"}},
    ),
}

# Shapes the ORT-vs-torch check runs on; P-Net gets odd sizes to exercise ceil_mode pooling.
CHECK_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "pnet": [(1, 3, 12, 12), (1, 3, 37, 53), (2, 3, 128, 97), (1, 3, 308, 308)],
    "rnet": [(1, 3, 24, 24), (37, 3, 24, 24)],
    "onet": [(1, 3, 48, 48), (9, 3, 48, 48)],
}


def facenet_data_dir() -> Path:
    """Folder of the facenet-pytorch wheel's weight files, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch==2.6.0")
    return Path(spec.submodule_search_locations[0]) / "data"


def load_network(name: str, data_dir: Path) -> nn.Module:
    module = GRAPHS[name][0]()
    state = torch.load(data_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


def export(name: str, module: nn.Module, path: Path) -> None:
    _, example_shape, inp, outs, dynamic_axes = GRAPHS[name]
    example = torch.randn(*example_shape)
    # The classic TorchScript exporter: these are plain conv/PReLU/pool stacks and it gives
    # small, deterministic graphs with named dynamic axes without the dynamo tracing detour.
    with warnings.catch_warnings():
        # We choose the legacy exporter on purpose (above); its deprecation notice is noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[inp.name],
            output_names=[o.name for o in outs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def check(name: str, module: nn.Module, path: Path, seed: int = 0) -> float:
    """Run torch and ONNX Runtime on random inputs; return and assert the max abs difference."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in CHECK_SHAPES[name]:
        x = torch.rand(*shape, generator=gen) * 2.0 - 1.0  # the normalised pixel range
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
        got = session.run(None, {"image": x.numpy()})
        for e, g in zip(expected, got, strict=True):
            if e.shape != g.shape:
                raise AssertionError(f"{name} {shape}: ORT shape {g.shape} != torch {e.shape}")
            worst = max(worst, float(np.max(np.abs(e - g))))
    print(f"{name}: max |torch - onnxruntime| = {worst:.3e} over {CHECK_SHAPES[name]}")
    if worst > MAX_ABS_DIFF:
        raise AssertionError(f"{name}: ONNX Runtime differs from torch by {worst:.3e} > {MAX_ABS_DIFF}")
    return worst


def build_card(out_dir: Path, diffs: dict[str, float]) -> ModelCard:
    graphs = {
        name: GraphSpec(
            file=f"{name}.onnx",
            sha256=sha256_file(out_dir / f"{name}.onnx"),
            inputs=[inp],
            outputs=list(outs),
        )
        for name, (_, _, inp, outs, _) in GRAPHS.items()
    }
    return ModelCard(
        name="mtcnn",
        version=f"facenet-pytorch-{FACENET_VERSION}",
        kind="detector",
        graphs=graphs,
        description=(
            "MTCNN face detector (P-Net -> R-Net -> O-Net cascade) of Zhang, Zhang, Li and Qiao, "
            "'Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks', "
            "IEEE Signal Processing Letters 23(10), 2016. Weights and layer definitions from "
            f"facenet-pytorch {FACENET_VERSION} (Tim Esler), converted to ONNX by tools/convert_mtcnn.py; "
            "the cascade runs in numpy in service/vision/mtcnn.py."
        ),
        license=f"MIT (weights from facenet-pytorch {FACENET_VERSION}, (c) Tim Esler)",
        extra={
            "source": f"facenet_pytorch/data/{{pnet,rnet,onet}}.pt from the facenet-pytorch {FACENET_VERSION} wheel",
            "opset": OPSET,
            "normalisation": "(x - 127.5) * 0.0078125 on RGB uint8 pixels",
            "defaults": {
                "min_face_size": DEFAULT_MIN_FACE_SIZE,
                "thresholds": list(DEFAULT_THRESHOLDS),
                "factor": DEFAULT_FACTOR,
            },
            "max_abs_diff_vs_torch": diffs,
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "mtcnn")
    args = parser.parse_args(argv)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = facenet_data_dir()
    torch.manual_seed(0)

    diffs: dict[str, float] = {}
    for name in GRAPHS:
        module = load_network(name, data_dir)
        path = out_dir / f"{name}.onnx"
        export(name, fast_form(name, module), path)
        diffs[name] = float(f"{check(name, module, path):.3e}")  # against facenet-pytorch's own layers
        print(f"{name}: wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    card_path = write_card(build_card(out_dir, diffs), out_dir)
    print(f"wrote {card_path}")


if __name__ == "__main__":
    main()
