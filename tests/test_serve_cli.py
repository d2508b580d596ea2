"""`pfvit-serve` / `python -m service` on the command line: help without starting anything,
clear usage errors."""

import subprocess
import sys


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
