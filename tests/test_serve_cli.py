"""`pfvit-serve` / `python -m service` on the command line: help (with every setting) without
starting anything, clear usage and settings errors."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.config import Settings


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=30)


def test_help_exits_at_once_and_names_the_settings():
    result = _serve("--help")
    assert result.returncode == 0, result.stderr
    assert "PFVIT_" in result.stdout and "--port" in result.stdout


def test_a_bad_port_is_a_usage_error():
    result = _serve("--port", "70000")
    assert result.returncode == 2
    assert "not a TCP port" in result.stderr


def test_help_lists_every_setting():
    from service.config import Settings

    out = _serve("--help").stdout
    for name in Settings.model_fields:
        assert f"PFVIT_{name.upper()}" in out


def test_an_invalid_setting_is_one_clear_line(tmp_path):
    env = {**os.environ, "PFVIT_MAX_QUEUE": "-3", "PFVIT_LOG_FORMAT": "xml"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("pfvit: invalid setting:")
        and "PFVIT_MAX_QUEUE='-3'" in line
        and "PFVIT_LOG_FORMAT='xml'" in line
    )
    assert "Traceback" not in result.stderr


def test_a_default_max_faces_over_the_limit_is_refused_at_start(tmp_path):
    env = {**os.environ, "PFVIT_DEFAULT_MAX_FACES": "50", "PFVIT_MAX_FACES_LIMIT": "10"}
    result = subprocess.run(
        [sys.executable, "-m", "service"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "PFVIT_DEFAULT_MAX_FACES='50'" in line and "PFVIT_MAX_FACES_LIMIT (10)" in line, line
    # Equal is fine: the default may be the largest a client could ask for.
    assert Settings(default_max_faces=10, max_faces_limit=10).default_max_faces == 10
    with pytest.raises(ValidationError):
        Settings(default_max_faces=11, max_faces_limit=10)
