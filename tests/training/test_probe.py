"""tools/probe_classifier.py runs end to end on stand-in data and reports one line per epoch."""

import json

import pytest

pytest.importorskip("torch")

from tools import probe_classifier  # noqa: E402


def test_probe_reports_each_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", "synthetic:n=32", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--threads", "1"]
    assert probe_classifier.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(0.0 <= line["val_accuracy"] <= 1.0 and line["stem"] == "conv" for line in lines)
