"""The detector's export forms (``tools/convert_mtcnn.py``): P-Net, R-Net and O-Net with their
first PReLU moved after the pool (its convolution padded to whole blocks), the others split into
scales and a ReLU, and P-Net's heads folded, compute what facenet-pytorch's layers compute, in
torch and through ONNX Runtime, on random weights with slopes of both signs and on odd sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tools import convert_mtcnn as conv  # noqa: E402


def _random_net(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = conv.GRAPHS[name][0]()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(-1.3, 1.1)  # the shipped slopes span -1.28 to 1.01
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()  # activations of order 1 at every depth
                module.weight.normal_(0, fan_in**-0.5)
                module.bias.normal_(0, 0.15)
    return net.eval()


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_fast_forms_compute_the_same(name: str, seed: int, tmp_path: Path) -> None:
    net = _random_net(name, seed)
    fast = conv.fast_form(name, net)
    assert fast.block1.extra == int((net.prelu1.weight < 0).sum()) > 0  # both kinds of slope are exercised
    assert fast.block1.conv.out_channels % 16 == 0  # whole blocks of the blocked layout
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for shape in conv.CHECK_SHAPES[name]:
            x = torch.rand(*shape, generator=generator) * 2 - 1
            for want, got in zip(net(x), fast(x), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    path = tmp_path / f"{name}.onnx"
    conv.export(name, fast, path)
    assert conv.check(name, net, path) < conv.MAX_ABS_DIFF  # ONNX Runtime on the fast graph vs the plain layers


def test_pool_then_prelu_without_negative_slopes() -> None:
    """All slopes non-negative: the PReLU commutes with the pool, no extra channels."""
    torch.manual_seed(0)
    c, p, pool = torch.nn.Conv2d(3, 4, 3), torch.nn.PReLU(4), torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    with torch.no_grad():
        p.weight.copy_(torch.tensor([0.0, 0.2, 0.7, 1.2]))
    block = conv.PoolThenPReLU(c, p, pool)
    assert block.extra == 0 and block.spread is None and block.conv.out_channels == 16  # 4 filters, 12 of padding
    x = torch.randn(2, 3, 17, 23)
    with torch.no_grad():
        np.testing.assert_allclose(block(x).numpy(), pool(p(c(x))).numpy(), atol=1e-6)
