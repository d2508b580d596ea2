"""Soak test: many clients on loopback for minutes, mixed routes; errors by status, latency
percentiles and the server's memory over time.

    python -m tools.soak                                  # 32 clients x 10 min on the shipped model
    python -m tools.soak --clients 8 --duration-s 60      # a short check
    python -m tools.soak --url http://127.0.0.1:8000      # against a running service

Without ``--url`` it starts ``python -m service`` on a free loopback port (extra settings with
``--env NAME=VALUE``; ``MALLOC_ARENA_MAX=2`` as in the container image unless given) and
stops it at the end. The server's RSS is read from its own
``process_resident_memory_bytes`` on /metrics, so ``--url`` works for any service the tool
can reach. Each client sends, in turn: a multipart photo to /v1/recognize, the same photo as
base64 JSON, a poker face as JSON and as PNG, a broken upload (which must be a 4xx once
admitted; 503 while the queue is full), and a liveness probe. The report says how many
answers each status got, p50/p99 per route, how many took longer than the deadline, and RSS
at the start, at 20 % of the run (minute 2 of 10), in the middle and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from tools.loopback import start_server, stop_server, wait_until_ready

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "fixtures" / "astronaut.png"


def _requests(photo: bytes) -> list[tuple[str, dict]]:
    """(route label, httpx request kwargs) in the order each client cycles through."""
    data_uri = "data:image/png;base64," + base64.b64encode(photo).decode()
    return [
        (
            "recognize-multipart",
            {"method": "POST", "url": "/v1/recognize", "files": {"images": ("photo.png", photo, "image/png")}},
        ),
        (
            "recognize-json",
            {"method": "POST", "url": "/v1/recognize", "json": {"images": [{"data": data_uri}], "max_faces": 5}},
        ),
        ("poker-face-json", {"method": "POST", "url": "/v1/poker-face", "json": {"images": [{"data": data_uri}]}}),
        (
            "poker-face-png",
            {
                "method": "POST",
                "url": "/v1/poker-face",
                "files": {"images": ("photo.png", photo, "image/png")},
                "headers": {"Accept": "image/png"},
            },
        ),
        (
            "broken-upload",
            {
                "method": "POST",
                "url": "/v1/recognize",
                "files": {"images": ("cut.png", photo[: len(photo) // 3], "image/png")},
            },
        ),
        ("healthz", {"method": "GET", "url": "/healthz"}),
    ]


async def _rss_bytes(client: httpx.AsyncClient) -> float | None:
    try:
        text = (await client.get("/metrics", timeout=10)).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


async def soak(url: str, *, clients: int, duration_s: float, deadline_s: float, api_key: str | None = None) -> dict:
    photo = PHOTO.read_bytes()
    plan = _requests(photo)
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    statuses: Counter[str] = Counter()
    by_route_status: dict[str, Counter[int | str]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    over_deadline = 0
    rss: dict[str, float | None] = {}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=deadline_s + 10) as client:
        rss["start"] = await _rss_bytes(client)
        start = time.perf_counter()
        stop_at = start + duration_s

        async def one_client(index: int) -> None:
            nonlocal over_deadline
            step = index  # clients start at different places in the plan
            while time.perf_counter() < stop_at:
                route, kwargs = plan[step % len(plan)]
                step += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.request(**kwargs)
                    status: int | str = resp.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - t0
                statuses[str(status)] += 1
                by_route_status[route][status] += 1
                if status == 200:
                    latencies[route].append(elapsed)
                if elapsed > deadline_s:
                    over_deadline += 1

        async def sample_rss() -> None:
            for label, fraction in (("minute_2_of_10", 0.2), ("middle", 0.5)):
                await asyncio.sleep(max(0.0, start + fraction * duration_s - time.perf_counter()))
                rss[label] = await _rss_bytes(client)

        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        await sampler
        rss["end"] = await _rss_bytes(client)
        wall_s = time.perf_counter() - start

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    everything = [v for vals in latencies.values() for v in vals]
    mib = {k: (None if v is None else round(v / 2**20, 1)) for k, v in rss.items()}
    end, minute_2 = rss.get("end"), rss.get("minute_2_of_10")
    growth = None if end is None or minute_2 is None else round((end - minute_2) / 2**20, 1)
    server_errors = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500 and s not in ("503", "504"))
    return {
        "clients": clients,
        "duration_s": round(wall_s, 1),
        "requests": sum(statuses.values()),
        "requests_per_s": round(sum(statuses.values()) / wall_s, 2),
        "statuses": dict(sorted(statuses.items())),
        "by_route": {
            route: {str(k): v for k, v in sorted(c.items(), key=str)} for route, c in sorted(by_route_status.items())
        },
        "latency_ms_200": {
            "all": {
                "p50": pct(everything, 0.5),
                "p99": pct(everything, 0.99),
                "mean": round(1000 * statistics.fmean(everything), 1) if everything else None,
            },
            **{route: {"p50": pct(v, 0.5), "p99": pct(v, 0.99)} for route, v in sorted(latencies.items())},
        },
        "over_deadline": over_deadline,
        "deadline_s": deadline_s,
        "server_errors_other_than_503_504": server_errors,
        # A broken upload is found out only once the request is admitted and decoded; while the
        # queue is full it is shed with 503 like any other request. Admitted, it must be a 4xx.
        "broken_uploads_answered_4xx": all(
            isinstance(s, int) and (400 <= s < 500 or s == 503) for s in by_route_status["broken-upload"]
        )
        and any(isinstance(s, int) and 400 <= s < 500 for s in by_route_status["broken-upload"]),
        "rss_mib": mib,
        "rss_growth_mib_minute_2_to_end": growth,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running service; without it one is started on loopback")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=30.0,
        help="the service's PFVIT_REQUEST_TIMEOUT_S (for the over-deadline count)",
    )
    parser.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the started server (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        extra = dict(item.split("=", 1) for item in args.env)
        extra.setdefault("PFVIT_LOG_LEVEL", "warning")
        extra.setdefault("MALLOC_ARENA_MAX", "2")  # as the container image sets it
        extra.setdefault("PFVIT_REQUEST_TIMEOUT_S", str(args.deadline_s))
        proc, url = start_server(extra)
        wait_until_ready(proc, url)
    try:
        report = asyncio.run(
            soak(
                url, clients=args.clients, duration_s=args.duration_s, deadline_s=args.deadline_s, api_key=args.api_key
            )
        )
    finally:
        if proc is not None:
            stop_server(proc)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["server_errors_other_than_503_504"] == 0 and report["broken_uploads_answered_4xx"] else 1


if __name__ == "__main__":
    sys.exit(main())
