"""tools/profile_pnet.py profiles the shipped P-Net over a pyramid and accounts for its time by operator."""

from __future__ import annotations

import pytest

from tests.markdown_tables import table_with
from tools import profile_pnet


def test_profile_accounts_for_the_convolutions(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile_pnet.main(["--side", "160", "--runs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = {row["operator"]: float(row["ms"]) for row in table_with(out, "operator")}
    assert "Conv" in rows and rows["Conv"] > 0
    assert "PRelu" not in rows and "Softmax" not in rows  # the export form has neither (tools/convert_mtcnn.py)
