"""Start and stop `python -m service` on 127.0.0.1: for the end-to-end tests and the HTTP benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env_extra: dict[str, str], *, repo: Path = REPO, **popen_kwargs) -> tuple[subprocess.Popen, str]:
    """Launch the service of the checkout ``repo`` (this one by default) on a free loopback
    port; returns the process and its base URL."""
    port = free_port()
    env = {**os.environ, "PFVIT_HOST": "127.0.0.1", "PFVIT_PORT": str(port), **env_extra}
    if repo != REPO:
        env["PYTHONPATH"] = str(repo)
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env, **popen_kwargs)
    return proc, f"http://127.0.0.1:{port}"


def wait_until_ready(proc: subprocess.Popen, url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before becoming ready")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready within {timeout_s} s")


@contextmanager
def serving(env_extra: dict[str, str], *, quiet: bool = True, timeout_s: float = 60.0) -> Iterator[str]:
    """A ready service on loopback for the block; yields its base URL and stops it after."""
    output: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if quiet else {}
    proc, url = start_server(env_extra, **output)
    try:
        wait_until_ready(proc, url, timeout_s=timeout_s)
        yield url
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
