"""Probe a running service with hostile input and print a table of what held.

    python -m tools.probe_hostile http://127.0.0.1:8000 [--api-key KEY] [--mutations 400]

Checks, each bounded in count and time:

- corpus: hostile files (unsupported formats, truncated and corrupt files, bombs) and a
  seeded mutation corpus over every accepted format, as multipart, as base64 JSON and as a
  poker-face request: no answer may be a 5xx, none may take more than 2 s;
- stall: three uploads built to be slow to parse (a JPEG of millions of empty comment
  markers, PNGs of hundreds of thousands of tiny chunks) sent at once, while ``/healthz`` is
  timed;
- amplification: a JSON body of 1,000,000 empty ``images`` items: the answer's status,
  size and time, ``/healthz`` meanwhile, and the server's memory growth;
- keyless memory (only when the server has API keys): 24 connections without a key, each
  sending a 20 MiB body but its last byte: the server's memory growth, and how many were
  answered 401 before their last byte.

Memory growth is the server's peak resident memory during a check over its resident memory
before it: with ``--pid`` (a server process on this machine, one worker) the kernel's own peak
(``VmHWM``, reset before each check), otherwise ``process_resident_memory_bytes`` from
``/metrics`` (all workers together), sampled every 50 ms. Only loopback addresses are probed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from tools import hostile_corpus as hc

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "astronaut.png"
SLOW_S = 2.0


@dataclass
class Row:
    check: str
    result: str
    ok: bool


@dataclass
class Probe:
    url: str
    api_key: str | None
    pid: int | None = None  # the server process, when it runs on this machine with one worker
    rows: list[Row] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def add(self, check: str, result: str, ok: bool) -> None:
        self.rows.append(Row(check, result, ok))
        print(f"  {'ok ' if ok else 'BAD'} {check}: {result}", file=sys.stderr, flush=True)


# --- measuring the server ---------------------------------------------------------------------


def rss_mib(url: str, headers: dict[str, str]) -> float | None:
    try:
        text = httpx.get(url + "/metrics", headers=headers, timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    return None


def _status_kib(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return float(line.split()[1])
    raise KeyError(field_name)


class MemoryWatch:
    """The server's resident memory growth over a block: its peak during the block minus its
    resident memory at the start."""

    def __init__(self, probe: Probe, sampler: Sampler) -> None:
        self.probe, self.sampler = probe, sampler
        self.before: float | None = None

    def __enter__(self) -> MemoryWatch:
        if self.probe.pid is not None:
            Path(f"/proc/{self.probe.pid}/clear_refs").write_text("5")  # reset the kernel's peak (VmHWM) to now
            self.before = _status_kib(self.probe.pid, "VmRSS") / 1024
        else:
            self.before = rss_mib(self.probe.url, self.probe.headers)
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def growth_mib(self) -> float:
        if self.before is None:
            return float("nan")
        if self.probe.pid is not None:
            return _status_kib(self.probe.pid, "VmHWM") / 1024 - self.before
        return max(self.sampler.rss, default=self.before) - self.before


class Sampler:
    """Samples ``/healthz`` latency (and, if asked, the server's RSS from ``/metrics``) every
    50 ms until stopped."""

    def __init__(self, url: str, headers: dict[str, str], *, rss: bool = False) -> None:
        self.url, self.headers, self.sample_rss = url, headers, rss
        self.health_ms: list[float] = []
        self.health_failures = 0
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while True:  # at least one sample, however short the load
                start = time.perf_counter()
                try:
                    ok = client.get(self.url + "/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_ms.append((time.perf_counter() - start) * 1000)
                self.health_failures += not ok
                value = rss_mib(self.url, self.headers) if self.sample_rss else None
                if value is not None:
                    self.rss.append(value)
                if self._stop.wait(0.02):
                    break

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worst_health_ms(self) -> float:
        return max(self.health_ms, default=float("nan"))


# --- the checks ------------------------------------------------------------------------------


def _send(
    client: httpx.Client, url: str, route: str, form: str, data: bytes, headers: dict[str, str]
) -> tuple[int, float]:
    start = time.perf_counter()
    if form == "json":
        resp = client.post(url + route, json={"images": [{"data": base64.b64encode(data).decode()}]}, headers=headers)
    else:
        resp = client.post(url + route, files={"images": ("x", data, "application/octet-stream")}, headers=headers)
    return resp.status_code, time.perf_counter() - start


def check_corpus(probe: Probe, mutations: int) -> None:
    image = Image.open(FIXTURE).convert("RGB")
    named = {name: data for name, (data, _) in hc.named_files(image).items()}
    mutated = dict(hc.mutation_corpus(mutations))
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    slow: list[str] = []
    worst = 0.0
    sent = 0
    with httpx.Client(timeout=60) as client:
        plan = [
            (name, data, route, form)
            for name, data in named.items()
            for route, form in (
                ("/v1/recognize", "multipart"),
                ("/v1/recognize", "json"),
                ("/v1/poker-face", "multipart"),
            )
        ]
        plan += [(name, data, "/v1/recognize", "multipart") for name, data in mutated.items()]
        plan += [(name, data, "/v1/recognize", "json") for name, data in list(mutated.items())[: mutations // 4]]
        for name, data, route, form in plan:
            try:
                status, seconds = _send(client, probe.url, route, form, data, probe.headers)
            except httpx.HTTPError as exc:
                server_errors.append(f"{name} {route} {form}: {type(exc).__name__}")
                continue
            sent += 1
            statuses[status] += 1
            worst = max(worst, seconds)
            if status >= 500:
                server_errors.append(f"{name} {route} {form}: {status}")
            if seconds > SLOW_S:
                slow.append(f"{name} {route} {form}: {seconds:.1f} s")
    summary = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
    probe.add(
        f"corpus: {len(named)} named files x 3 forms, {mutations} mutated files (+{mutations // 4} as JSON)",
        f"{sent} answered ({summary}); slowest {worst:.2f} s",
        True,
    )
    probe.add(
        "corpus: answers that are a 5xx or no answer",
        str(len(server_errors)) + (f" ({'; '.join(server_errors[:5])})" if server_errors else ""),
        not server_errors,
    )
    probe.add(
        f"corpus: answers slower than {SLOW_S:g} s",
        str(len(slow)) + (f" ({'; '.join(slow[:5])})" if slow else ""),
        not slow,
    )


def _failures(sampler: Sampler) -> str:
    return f" ({sampler.health_failures} of {len(sampler.health_ms)} failed)" if sampler.health_failures else ""


_BOUNDARY = "pfvit-probe-boundary"


def _multipart_body(name: str, data: bytes) -> bytes:
    head = (
        f"--{_BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{_BOUNDARY}--\r\n".encode()


def _post_raw(
    url: str, path: str, body: bytes, headers: dict[str, str], timeout_s: float = 120.0
) -> tuple[int | str, float]:
    """POST a prepared body with http.client (one sendall, outside the GIL): the client's own
    Python work does not pace the upload or the /healthz timings taken beside it."""
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        status: int | str = resp.status
    except OSError as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    return status, time.perf_counter() - start


def check_stall(probe: Probe) -> None:
    uploads = {
        "jpeg-5M-comments": hc.jpeg_comment_flood(5_000_000),
        "png-950k-chunks": hc.png_chunk_flood(950_000),
        "png-950k-chunks-b": hc.png_chunk_flood(950_001),
    }
    answers: dict[str, tuple[int | str, float]] = {}
    bodies = {name: _multipart_body(name, data) for name, data in uploads.items()}

    def post(name: str, body: bytes) -> None:
        answers[name] = _post_raw(
            probe.url,
            "/v1/recognize",
            body,
            {**probe.headers, "Content-Type": "multipart/form-data; boundary=" + _BOUNDARY},
        )

    with Sampler(probe.url, probe.headers) as sampler:
        threads = [threading.Thread(target=post, args=item) for item in bodies.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name, (status, seconds) in answers.items():
        ok = isinstance(status, int) and 400 <= status < 500 and seconds < 1.0
        probe.add(f"stall: {name} ({len(uploads[name]) / 2**20:.0f} MiB)", f"{status} in {seconds:.2f} s", ok)
    probe.add(
        "stall: slowest /healthz while the three were in flight",
        f"{sampler.worst_health_ms:.0f} ms" + _failures(sampler),
        sampler.worst_health_ms < 100 and not sampler.health_failures,
    )


def check_amplification(probe: Probe) -> None:
    body = b'{"images": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    result: dict[str, Any] = {}

    def post() -> None:
        parts = urlsplit(probe.url)
        start = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
        try:
            conn.request(
                "POST", "/v1/recognize", body=body, headers={**probe.headers, "Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            result.update(status=resp.status, size=len(resp.read()))
        except OSError as exc:
            result.update(status=type(exc).__name__, size=0)
        finally:
            conn.close()
        result["seconds"] = time.perf_counter() - start

    with Sampler(probe.url, probe.headers, rss=probe.pid is None) as sampler, MemoryWatch(probe, sampler) as memory:
        thread = threading.Thread(target=post)
        thread.start()
        thread.join()
    growth = memory.growth_mib
    status, size, seconds = result["status"], int(result["size"]), float(result["seconds"])
    ok = isinstance(status, int) and 400 <= status < 500 and size < 64 * 1024 and seconds < 1.0
    probe.add(
        f"amplification: 1,000,000 empty items ({len(body) / 2**20:.1f} MiB body)",
        f"{status}, {size:,} bytes, {seconds:.2f} s",
        ok,
    )
    probe.add(
        "amplification: slowest /healthz meanwhile",
        f"{sampler.worst_health_ms:.0f} ms" + _failures(sampler),
        sampler.worst_health_ms < 100 and not sampler.health_failures,
    )
    probe.add("amplification: server RSS growth", f"{growth:.0f} MiB", growth < 100)


def _keyless_upload(
    host: str, port: int, body_bytes: int, held: threading.Barrier, release: threading.Event, out: dict
) -> None:
    """Send a keyless POST with all of its body but the last byte; note whether the answer
    came before the last byte; hold the connection until ``release``."""
    answer = b""
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(
                f"POST /v1/recognize HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {body_bytes}\r\n\r\n".encode()
            )
            chunk = b"x" * 65536
            left = body_bytes - 1
            sock.setblocking(False)
            while left > 0:
                try:
                    left -= sock.send(chunk[: min(len(chunk), left)])
                except BlockingIOError:
                    time.sleep(0.002)
                except OSError:
                    break  # the server closed its side
                try:
                    answer += sock.recv(65536)
                except (BlockingIOError, OSError):
                    pass
            sock.settimeout(3.0)
            try:
                while b"\r\n\r\n" not in answer:
                    piece = sock.recv(65536)
                    if not piece:
                        break
                    answer += piece
            except OSError:
                pass
            out["status"] = answer[9:12].decode("latin-1") if answer.startswith(b"HTTP/1.1 ") else "none"
            out["sent_all_but_last"] = left <= 0
            held.wait(timeout=60)
            release.wait(timeout=60)
    except OSError as exc:
        out.setdefault("status", type(exc).__name__)
        held.abort()


def check_keyless_memory(probe: Probe, connections: int = 24, body_mib: int = 20) -> None:
    if httpx.get(probe.url + "/v1/limits", timeout=10).status_code != 401:
        probe.add("keyless memory", "skipped: the server has no API keys (set PFVIT_API_KEYS)", True)
        return
    parts = urlsplit(probe.url)
    held = threading.Barrier(connections + 1)
    release = threading.Event()
    outs: list[dict] = [{} for _ in range(connections)]
    with Sampler(probe.url, probe.headers, rss=probe.pid is None) as sampler, MemoryWatch(probe, sampler) as memory:
        threads = [
            threading.Thread(
                target=_keyless_upload,
                args=(parts.hostname, parts.port or 80, body_mib * 2**20, held, release, out),
                daemon=True,
            )
            for out in outs
        ]
        for thread in threads:
            thread.start()
        try:
            held.wait(timeout=90)  # every connection has sent its body but one byte
        except threading.BrokenBarrierError:
            pass
        time.sleep(0.5)  # a few more memory samples while all are held
        growth = memory.growth_mib  # while every connection is still held
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    early = sum(out.get("status") == "401" for out in outs)
    probe.add(
        f"keyless memory: {connections} connections x {body_mib} MiB body but its last byte",
        f"RSS growth {growth:.0f} MiB",
        growth < 50,
    )
    answers = Counter(str(out.get("status")) for out in outs)
    probe.add(
        "keyless memory: answered 401 before the last byte",
        f"{early}/{connections} ({dict(answers)})",
        early == connections,
    )


def table(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    rwidth = max(len(r.result) for r in rows)
    lines = [
        f"| {'check':<{width}} | {'result':<{rwidth}} | held |",
        f"|{'-' * (width + 2)}|{'-' * (rwidth + 2)}|------|",
    ]
    lines += [f"| {r.check:<{width}} | {r.result:<{rwidth}} | {'yes' if r.ok else 'NO':<4} |" for r in rows]
    return "\n".join(lines)


CHECKS: dict[str, Callable[[Probe, argparse.Namespace], None]] = {
    "corpus": lambda probe, args: check_corpus(probe, args.mutations),
    "stall": lambda probe, args: check_stall(probe),
    "amplification": lambda probe, args: check_amplification(probe),
    "keyless": lambda probe, args: check_keyless_memory(probe),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="base URL of a running service on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="a key the server accepts (when it has PFVIT_API_KEYS)")
    parser.add_argument("--mutations", type=int, default=400, help="mutated files sent (default 400)")
    parser.add_argument(
        "--pid",
        type=int,
        help="the server's process id, when it runs here with one worker: memory from the kernel's peak",
    )
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback:
        parser.error(f"{host!r} is not a loopback address: this tool only probes a server on this machine")
    url = args.url.rstrip("/")
    probe = Probe(url=url, api_key=args.api_key, pid=args.pid)
    httpx.get(url + "/healthz", timeout=10).raise_for_status()
    for name in args.checks.split(","):
        CHECKS[name.strip()](probe, args)
    print(table(probe.rows))
    return 0 if all(r.ok for r in probe.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
