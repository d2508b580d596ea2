"""Server memory around one large request, with ONNX Runtime's CPU arena off and on.

    python -m tools.measure_memory                          # 4000 px photo, default options
    python -m tools.measure_memory --size 6300 --min-face-size 8
    python -m tools.measure_memory --workers 2              # RSS of each worker process (PFVIT_WORKERS)

For each arena setting it starts ``python -m service`` on loopback (``PFVIT_ORT_CPU_ARENA``),
sends one photo of ``--size`` x ``--size`` pixels (the fixture photo scaled up) to
/v1/recognize, and reads the server's RSS before, its peak during (VmHWM, Linux), and its
RSS after the answer (twice: at once and after a pause). Before that, the p50 of 30 requests
with the fixture photo shows what the setting costs small requests. The numbers go in docs/deploy.md.

``--workers N`` instead starts one server with N worker processes, sends the fixture photo 40
times (4 clients, a new connection per request, so that every worker serves), and reads the RSS
of the supervising process and of each worker (the workers are those /metrics names).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

from tools.loopback import start_server, stop_server, wait_until_ready

REPO = Path(__file__).resolve().parent.parent


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise KeyError(field)


def big_photo(size: int) -> bytes:
    image = (
        Image.open(REPO / "tests" / "fixtures" / "astronaut.png")
        .convert("RGB")
        .resize((size, size), Image.Resampling.BILINEAR)
    )
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def measure(
    arena: bool, photo: bytes, min_face_size: int | None, env_extra: dict[str, str], small_requests: int = 30
) -> dict:
    env = {
        "PFVIT_ORT_CPU_ARENA": "true" if arena else "false",
        "PFVIT_LOG_LEVEL": "warning",
        "PFVIT_REQUEST_TIMEOUT_S": "600",
        **env_extra,
    }
    proc, url = start_server(env)
    try:
        wait_until_ready(proc, url, timeout_s=120)
        # The everyday cost of the setting: p50 of small requests (the fixture photo).
        small = (REPO / "tests" / "fixtures" / "astronaut.png").read_bytes()
        times = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(small_requests + 5):
                t0 = time.perf_counter()
                client.post("/v1/recognize", files={"images": ("a.png", small, "image/png")}).raise_for_status()
                if i >= 5:  # the first few warm the connection and the allocator
                    times.append(time.perf_counter() - t0)
        idle = _status_mib(proc.pid, "VmRSS")
        params = {"min_face_size": min_face_size} if min_face_size else {}
        start = time.perf_counter()
        resp = httpx.post(
            url + "/v1/recognize", params=params, files={"images": ("big.jpg", photo, "image/jpeg")}, timeout=900
        )
        seconds = time.perf_counter() - start
        after = _status_mib(proc.pid, "VmRSS")
        time.sleep(5)
        settled = _status_mib(proc.pid, "VmRSS")
        return {
            "arena": arena,
            "small_request_p50_ms": round(1000 * statistics.median(times), 1),
            "status": resp.status_code,
            "seconds": round(seconds, 1),
            "rss_idle_mib": idle,
            "rss_peak_mib": _status_mib(proc.pid, "VmHWM"),
            "rss_after_mib": after,
            "rss_after_5s_mib": settled,
        }
    finally:
        stop_server(proc)


def measure_workers(workers: int, env_extra: dict[str, str], requests: int = 40) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client.parser import text_string_to_metric_families

    def per_worker(name: str) -> dict[int, float]:
        text = httpx.get(url + "/metrics", timeout=30).text
        return {
            int(s.labels["pid"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and "pid" in s.labels
        }

    env = {"PFVIT_WORKERS": str(workers), "PFVIT_LOG_LEVEL": "warning", **env_extra}
    proc, url = start_server(env)
    try:
        wait_until_ready(proc, url, timeout_s=120)
        deadline = time.monotonic() + 120
        while not (len(ready := per_worker("pfvit_ready")) == workers and all(v == 1 for v in ready.values())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not all ready: {ready}")
            time.sleep(0.2)
        small = (REPO / "tests" / "fixtures" / "astronaut.png").read_bytes()

        def one(_: int) -> int:
            with httpx.Client(timeout=60) as client:
                return client.post(url + "/v1/recognize", files={"images": ("a.png", small, "image/png")}).status_code

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(one, range(requests)))
        answered = per_worker("pfvit_worker_http_requests")
        return {
            "workers": workers,
            "status_200": statuses.count(200),
            "supervisor_rss_mib": _status_mib(proc.pid, "VmRSS"),
            "worker_rss_mib": {pid: _status_mib(pid, "VmRSS") for pid in sorted(answered)},
            "worker_peak_rss_mib": {pid: _status_mib(pid, "VmHWM") for pid in sorted(answered)},
            "worker_requests": {pid: int(v) for pid, v in sorted(answered.items())},
        }
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.measure_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4000, help="side of the square test photo, pixels")
    parser.add_argument(
        "--min-face-size", type=int, default=None, help="the request's min_face_size (default: the service's)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="another setting for both servers"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="measure the RSS of each of this many worker processes instead"
    )
    args = parser.parse_args(argv)
    if args.workers:
        row = measure_workers(args.workers, dict(item.split("=", 1) for item in args.env))
        print(json.dumps(row, indent=2))
        return 0 if row["status_200"] == 40 else 1
    photo = big_photo(args.size)
    extra = dict(item.split("=", 1) for item in args.env)
    rows = [measure(arena, photo, args.min_face_size, extra) for arena in (False, True)]
    print(
        json.dumps(
            {"size": args.size, "jpeg_bytes": len(photo), "min_face_size": args.min_face_size, "runs": rows}, indent=2
        )
    )
    return 0 if all(r["status"] == 200 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
