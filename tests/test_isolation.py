"""The service half runs on ONNX Runtime alone: importing it never pulls in torch or training."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_service_imports_without_torch():
    code = (
        "import sys\n"
        "import service.app, service.__main__, service.vision.mtcnn, service.api.routes.recognize\n"
        "service.app.create_app()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_no_service_module_mentions_torch_imports():
    for path in (REPO / "service").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch", "import training", "from training")), (
                f"{path}: {line}"
            )


def test_nothing_outside_tests_imports_tests():
    # The tests may use the tools (tools.loopback, tools.stub_model); never the other way round.
    offenders = []
    for top in ("service", "training", "tools"):
        for path in (REPO / top).rglob("*.py"):
            for line in path.read_text().splitlines():
                if line.strip().startswith(("import tests", "from tests")):
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []
