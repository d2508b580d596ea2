"""tools/bench_photos.py runs end to end on its photo set: its detection part finds every face
facenet-pytorch finds, with the service's detector threads and with one; its HTTP part alone
serves the set.

The whole detection benchmark is behind the ``bench`` marker (``pytest -m bench``); the default
suite keeps the short HTTP run and the failure path as its smoke test.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.markdown_tables import table_with
from tools import bench_photos

FOUND = "faces: facenet / ours / facenet's found by us"


@pytest.mark.bench
@pytest.mark.skipif(
    importlib.util.find_spec("facenet_pytorch") is None,
    reason="facenet-pytorch is not installed (make test installs it)",
)
def test_detection_bench_finds_every_face_facenet_finds(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_photos.main(["--detection-only", "--runs", "1", "--also-detect-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "every face facenet-pytorch finds is found by us: yes" in out
    rows = table_with(out, FOUND)
    assert len(rows) == 6
    (one_thread,) = [name for name in rows[0] if name.endswith(": ms / facenet's found")]
    for row in rows:  # facenet's faces found: by us, and by the one-thread column
        facenet, _ours, found = (int(v) for v in row[FOUND].split("/"))
        assert found == facenet, row
        assert int(row[one_thread].split("/")[1]) == facenet, row


def test_http_only_serves_the_set_without_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """The HTTP part alone, one client, one round: a real server on loopback answers every
    photo of the set (the smoke test of the benchmark)."""
    assert bench_photos.main(["--http-only", "--clients", "1", "--rounds", "1", "--max-seconds", "60"]) == 0
    out = capsys.readouterr().out
    assert "6 requests in" in out and ", 0 errors," in out
    assert "whole requests over HTTP, 1 client(s):" in out and "facenet" not in out


def test_a_failure_in_a_timing_process_reaches_the_caller(tmp_path) -> None:
    """Detection alone runs each detector in a process of its own: a detector that cannot load
    there stops the bench with its own error, not a hang or a bare exit."""
    from service.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="card"):
        bench_photos.main(["--detection-only", "--runs", "1", "--compare-models", str(tmp_path)])
