"""HTTP benchmark of /v1/recognize on loopback: images/s and p50/p95 latency per concurrency.

Starts `python -m service` on 127.0.0.1 (a free port), waits for readiness, then for each
concurrency level sends a bounded number of requests (each one photo) from that many client
threads and reports throughput, latency percentiles and the server's resident memory.

    python tools/bench_service.py                         # the shipped default model
    python tools/bench_service.py --stub                  # a hand-built tiny emotion model (detection-bound)
    python tools/bench_service.py --concurrency 1 4 16 --requests 64 --image tests/fixtures/astronaut.png

Every loop is bounded in count (--requests) and time (--max-seconds per level).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.loopback import start_server, stop_server, wait_until_ready  # noqa: E402


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of ``pid`` in MiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[idx]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=REPO / "tests" / "fixtures" / "astronaut.png")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="time bound per level")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--emotion-model", default=None, help="sub-folder of --models-dir (default: the service default)")
    ap.add_argument("--stub", action="store_true", help="serve a hand-built tiny emotion model instead")
    ap.add_argument("--threads", type=int, default=0, help="PFVIT_INTRA_OP_THREADS for the server (0: ORT decides)")
    args = ap.parse_args()

    env = {**os.environ, "PFVIT_HOST": "127.0.0.1", "PFVIT_PROVIDERS": os.environ.get("PFVIT_PROVIDERS", "auto")}
    tmp = None
    if args.stub:
        import shutil

        from tools.stub_model import write_stub_model

        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        shutil.copytree(args.models_dir / "mtcnn", root / "mtcnn")
        write_stub_model(root / "stub-emotion")
        env.update(PFVIT_MODELS_DIR=str(root), PFVIT_EMOTION_MODEL="stub-emotion")
    else:
        env["PFVIT_MODELS_DIR"] = str(args.models_dir)
        if args.emotion_model:
            env["PFVIT_EMOTION_MODEL"] = args.emotion_model
    env["PFVIT_INTRA_OP_THREADS"] = str(args.threads)
    env["PFVIT_LOG_LEVEL"] = "warning"
    proc, url = start_server(env)
    data = args.image.read_bytes()
    try:
        wait_until_ready(proc, url, timeout_s=120)
        model = httpx.get(url + "/v1/models", timeout=10).json()["models"][0]
        idle_rss, _ = rss_mib(proc.pid)
        print(f"model: {model['name']} {model['version']}; providers: {model['graphs']['recognition']['providers']}")
        print(
            f"image: {args.image.name} ({len(data)} bytes); cores here: {os.cpu_count()}; server RSS idle: "
            f"{idle_rss:.0f} MiB"
        )
        with httpx.Client(timeout=120) as warm:
            for _ in range(3):
                warm.post(url + "/v1/recognize", files={"images": ("img", data)})
            # One warm request's own stage times, poker face included, as the service reports them.
            stages = warm.post(
                url + "/v1/recognize", params={"return_poker_face": "true"}, files={"images": ("img", data)}
            ).json()["timings_ms"]
        print(
            "stage times of one request with return_poker_face=true (ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        )
        print("| clients | requests | images/s (answered) | p50 ms | p95 ms | errors | server RSS MiB (peak) |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            latencies: list[float] = []
            errors = 0
            level_deadline = time.monotonic() + args.max_seconds

            def worker(n: int) -> None:
                nonlocal errors
                with httpx.Client(timeout=120) as client:
                    for _ in range(n):
                        if time.monotonic() > level_deadline:
                            return
                        t0 = time.perf_counter()
                        r = client.post(url + "/v1/recognize", files={"images": ("img", data)})
                        latencies.append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            errors += 1

            per_client = [
                args.requests // concurrency + (1 if i < args.requests % concurrency else 0) for i in range(concurrency)
            ]
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(worker, per_client))
            wall = time.perf_counter() - start
            rss, peak = rss_mib(proc.pid)
            print(
                # images/s counts answered photos only: a 503 from the full queue is fast and no photo.
                f"| {concurrency} | {len(latencies)} | {(len(latencies) - errors) / wall:.1f} | "
                f"{1000 * statistics.median(latencies):.0f} | "
                f"{1000 * percentile(latencies, 95):.0f} | {errors} | {rss:.0f} ({peak:.0f}) |"
            )
    finally:
        stop_server(proc)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
