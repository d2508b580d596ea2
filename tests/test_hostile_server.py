"""Hostile clients against `pfvit-serve` on 127.0.0.1, through tools/probe_hostile.py's checks:
the event loop stays free while pathological uploads and a million-item JSON body are refused,
and keyless uploads are answered 401 from their headers without the server holding them."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import stub_server_env
from tools.loopback import start_server, stop_server, wait_until_ready
from tools.probe_hostile import Probe, check_amplification, check_keyless_memory, check_stall, table

pytestmark = pytest.mark.slow

KEY = "hostile-test-key"


@pytest.fixture(scope="module")
def keyed_server(settings):
    """One worker with API keys: the probe reads its memory from the kernel by its pid."""
    env = stub_server_env(settings, PFVIT_API_KEYS=KEY, PFVIT_LOG_LEVEL="warning")
    proc, url = start_server(env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(proc, url)
        yield url, proc.pid
    finally:
        stop_server(proc)


@pytest.mark.parametrize(
    "check", [check_stall, check_amplification, check_keyless_memory], ids=["stall", "amplification", "keyless-memory"]
)
def test_probe_check_holds(keyed_server, check):
    url, pid = keyed_server
    probe = Probe(url=url, api_key=KEY, pid=pid)
    check(probe)
    assert probe.rows and all(row.ok for row in probe.rows), "\n" + table(probe.rows)
