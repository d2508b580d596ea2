"""The GPU benchmark, runnable on any machine: whole requests over HTTP, the emotion graphs in
fp32 and fp16, and PF-ViT training steps, on one device. Prints a markdown table headed by the
device, its driver and the ONNX Runtime and torch versions.

    python tools/bench_gpu.py --device cuda                      # the figures docs/benchmarks.md asks for
    python tools/bench_gpu.py --device cpu --clients 1 4 --requests 16 --batches 1 64 \\
        --iterations 5 --train-models tiny --train-batches 4 --train-steps 2   # a smoke run on a CPU

Parts (each bounded in count and by --max-seconds):

- HTTP: ``python -m service`` on loopback (PFVIT_PROVIDERS=cpu or cuda, the shipped model), the
  512 px fixture photo (one face) sent by 1, 16 and 64 clients, each request on its client's
  keep-alive connection; photos/s and p50 / p99 latency.
- Graphs: the shipped model's recognition (classifier) and poker-face graphs, fp32 as shipped
  and fp16 as ``pfvit-export --fp16`` converts them, at batch 1, 64 and 256, run as the service
  runs them (IOBinding, the service's session options); faces/s.
- Training: PF-ViT tiny and base (224 px) at batch 64 and 256, the engine's own training step
  (generator and discriminator updates; bf16 autocast on CUDA, float32 on the CPU, as the engine
  trains), on batches already in memory; steps/s and images/s. Needs the train extra.

Without the train extra the fp16 rows and the training rows are skipped and say so.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.card import load_card  # noqa: E402
from service.models import EmotionModel  # noqa: E402
from service.runtime import CPU, CUDA, create_session  # noqa: E402
from tools.loopback import start_server, stop_server, wait_until_ready  # noqa: E402

MODEL = REPO / "models" / "pfvit-micro-ferplus"
PHOTO = REPO / "tests" / "fixtures" / "astronaut.png"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))]


def device_line(device: str) -> str:
    """The device, its driver and the library versions, for the table's heading."""
    parts = [
        f"ONNX Runtime {ort.__version__} "
        f"({', '.join(p for p in ort.get_available_providers() if p != 'AzureExecutionProvider')})"
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        parts.append("torch not installed")
    if device == "cuda":
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            gpu = (
                subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
                .stdout.strip()
                .splitlines()[0]
            )
            parts.insert(0, f"GPU {gpu} (name, driver, memory)")
        except (OSError, subprocess.SubprocessError, IndexError):
            parts.insert(0, "GPU: nvidia-smi did not answer")
    else:
        parts.insert(
            0,
            f"CPU {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} "
            "cores, no GPU used",
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------------------- HTTP
def bench_http(device: str, clients_list: list[int], requests: int, max_seconds: float) -> list[tuple]:
    env = {"PFVIT_PROVIDERS": device, "PFVIT_LOG_LEVEL": "warning", "PFVIT_MAX_QUEUE": "1000", "MALLOC_ARENA_MAX": "2"}
    proc, url = start_server(env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    photo = PHOTO.read_bytes()
    rows = []
    try:
        wait_until_ready(proc, url, timeout_s=180)
        for clients in clients_list:
            per_client = max(1, requests // clients)
            deadline = time.monotonic() + max_seconds

            def client_loop(_: int) -> list[float]:
                times = []
                with httpx.Client(base_url=url, timeout=120) as client:
                    for _ in range(per_client):
                        if time.monotonic() > deadline:
                            break
                        t0 = time.perf_counter()
                        client.post("/v1/recognize", files={"images": ("a.png", photo, "image/png")}).raise_for_status()
                        times.append(time.perf_counter() - t0)
                return times

            with ThreadPoolExecutor(clients) as pool:  # one warm-up request per client first
                list(
                    pool.map(
                        lambda _: httpx.post(
                            url + "/v1/recognize", files={"images": ("a.png", photo, "image/png")}, timeout=120
                        ),
                        range(clients),
                    )
                )
                t0 = time.perf_counter()
                latencies = [t for times in pool.map(client_loop, range(clients)) for t in times]
                wall = time.perf_counter() - t0
            rows.append(
                (
                    f"/v1/recognize, 512 px, {clients} client(s)",
                    f"{len(latencies) / wall:.1f} photos/s",
                    f"p50 {1000 * statistics.median(latencies):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms",
                    len(latencies),
                )
            )
    finally:
        stop_server(proc)
    return rows


# ------------------------------------------------------------------------------------- graphs
def fp16_copy(into: Path) -> Path | None:
    """The shipped model converted to fp16 (card copied), or None without the train extra."""
    try:
        from training.fp16 import convert_to_fp16
    except ImportError:
        return None
    for name in ("recognition", "poker_face"):
        convert_to_fp16(MODEL / f"{name}.onnx", into / f"{name}.onnx")
    shutil.copyfile(MODEL / "card.json", into / "card.json")
    return into


def bench_graphs(
    device: str, batches: list[int], iterations: int, max_seconds: float, fp16_dir: Path | None
) -> list[tuple]:
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    card = load_card(MODEL)
    rows = []
    for precision, folder in (("fp32", MODEL), ("fp16", fp16_dir)):
        if folder is None:
            rows.append((f"graphs, {precision}", "skipped: fp16 conversion needs the train extra", "", 0))
            continue
        sessions = {g: create_session(folder / f"{g}.onnx", providers=providers) for g in ("recognition", "poker_face")}
        model = EmotionModel(card, sessions)  # the service's run path (IOBinding), no checksum: a local copy
        rng = np.random.default_rng(0)
        for graph, label in (("recognition", "classifier"), ("poker_face", "poker-face graph")):
            for batch in batches:
                x = model._prepare(rng.integers(0, 256, size=(batch, *model.input_hw, 3), dtype=np.uint8))
                for _ in range(2):
                    model._run_graph(graph, x)
                done, t0 = 0, time.perf_counter()
                while done < iterations and time.perf_counter() - t0 < max_seconds:
                    model._run_graph(graph, x)
                    done += 1
                seconds = time.perf_counter() - t0
                rows.append(
                    (
                        f"{label} {precision}, batch {batch}",
                        f"{batch * done / seconds:.0f} faces/s",
                        f"{1000 * seconds / done:.2f} ms per call",
                        done,
                    )
                )
    return rows


# ----------------------------------------------------------------------------------- training
def bench_training(device: str, sizes: list[str], batches: list[int], steps: int, max_seconds: float) -> list[tuple]:
    try:
        import torch

        from training import distributed
        from training.config import TrainConfig
        from training.data import build_data
        from training.model import PFViT
        from training.sizes import model_config
        from training.stages import PFViTStage, RunLog
    except ImportError:
        return [("training", "skipped: needs the train extra (torch)", "", 0)]
    ctx = distributed.setup(device)
    rows = []
    for size in sizes:
        for batch in batches:
            config = model_config(
                size, labels=["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
            )
            dataset = build_data(f"synthetic:n={batch}", "train", config.image_size, augment=False)
            raw = torch.utils.data.default_collate([dataset[i] for i in range(batch)])
            cfg = TrainConfig(batch_size=batch, progress=False, device=device)
            stage = PFViTStage(cfg)
            state = stage.setup(PFViT(config).to(ctx.device), ctx, steps_per_epoch=steps + 1)
            with tempfile.TemporaryDirectory() as tmp:
                log = RunLog(Path(tmp) / "log.jsonl", False)
                stage.train_one_epoch(state, iter([raw]), 1, ctx, log)  # warm-up (allocations, kernels)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                done, t0 = 0, time.perf_counter()
                while done < steps and time.perf_counter() - t0 < max_seconds:
                    stage.train_one_epoch(state, iter([raw]), 1, ctx, log)
                    done += 1
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            autocast = "bf16 autocast" if ctx.device.type == "cuda" else "float32"
            rows.append(
                (
                    f"PF-ViT {size} training, {config.image_size} px, batch {batch}, {autocast}",
                    f"{done / seconds:.3f} steps/s",
                    f"{batch * done / seconds:.1f} images/s",
                    done,
                )
            )
            del state, stage
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=512, help="requests per client count (shared among the clients)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256], help="graph batch sizes")
    ap.add_argument("--iterations", type=int, default=100, help="timed calls per graph and batch size")
    ap.add_argument("--train-models", nargs="*", default=["tiny", "base"], help="PF-ViT sizes to train (none: skip)")
    ap.add_argument("--train-batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps per size and batch")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="time bound of each measurement")
    ap.add_argument("--skip-http", action="store_true")
    args = ap.parse_args(argv)
    if args.device == "cuda" and CUDA not in ort.get_available_providers():
        ap.error("--device cuda needs onnxruntime-gpu (the gpu extra)")

    rows: list[tuple] = []
    if not args.skip_http:
        rows += bench_http(args.device, args.clients, args.requests, args.max_seconds)
    with tempfile.TemporaryDirectory(prefix="pfvit-bench-") as tmp:
        rows += bench_graphs(args.device, args.batches, args.iterations, args.max_seconds, fp16_copy(Path(tmp)))
    if args.train_models:
        rows += bench_training(args.device, args.train_models, args.train_batches, args.train_steps, args.max_seconds)

    print(f"Device: {device_line(args.device)}\n")
    print("| what | throughput | latency / detail | timed runs |")
    print("|---|---|---|---|")
    for what, throughput, detail, runs in rows:
        print(f"| {what} | {throughput} | {detail} | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
