"""Speed on a mixed set of photos: detection alone against facenet-pytorch, and whole requests
over HTTP, in one run.

    python tools/bench_photos.py                  # what docs/benchmarks.md reports (make bench)
    python tools/bench_photos.py --quick          # fewer runs and requests, for a smoke test
    python tools/bench_photos.py --sweep          # HTTP only, over detector threads and concurrency settings
    python tools/bench_photos.py --detection-only --variant pnet_band_pixels=1000000000   # vs P-Net unbanded
    python tools/bench_photos.py --server-env MALLOC_MMAP_THRESHOLD_=1048576              # a server setting
    python tools/bench_photos.py --detection-only --compare-models /tmp/mtcnn-before      # other detector graphs
    python tools/bench_photos.py --detection-only --also-detect-threads 1  # vs one detector thread
    python tools/bench_photos.py --http-only --clients 4                   # one checkout's server alone

The set is built from what the repository holds: the public-domain astronaut photo at 512 px
(the PNG as shipped) and upscaled to 1280 and 2560 px (JPEG, as cameras write them), two
scenes of rendered faces (1920x1080 with 8 faces, 1280x720 with 12), and a photo with no face
(the lower part of the astronaut photo, 1600 px wide).

1. Detection alone, per image: the service's detection path (``service.vision.faces.find_faces``
   on the picture bounded by the service's default ``detect_max_side``, ``--threads`` detector
   threads with single-threaded sessions and one BLAS thread, as the service runs it) against
   ``facenet_pytorch.MTCNN(keep_all=True)`` on the same decoded array with ``--threads`` torch
   threads, each in a process of its own, runs interleaved. Also: whether we find the faces
   facenet-pytorch finds (a face counts as found when a box of ours overlaps it with IoU >= 0.5).
2. Whole requests: ``python -m service`` with its default settings on 127.0.0.1, each client
   sending the set's images one per request, in turn, from 1 and then 4 client threads;
   images/s, p50/p95 latency per image, and the server's peak RSS. The headline ratio is our
   4-client images/s over facenet-pytorch's detection-only images/s on the same set.

Every loop is bounded in count and time. The clients run on the same cores as the server.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from service.config import Settings  # noqa: E402
from service.scheduling import DetectorThreads, ScheduledDetector  # noqa: E402
from service.vision.faces import find_faces  # noqa: E402
from service.vision.imaging import Picture, decode_image  # noqa: E402
from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, DEFAULT_TUNING, MTCNN, CascadeTuning, session_threads  # noqa: E402
from tools.bench_service import percentile, rss_mib  # noqa: E402
from tools.loopback import start_server, stop_server, wait_until_ready  # noqa: E402

ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes  # the file as uploaded
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, decoded


def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scene(canvas: tuple[int, int], grid: tuple[int, int], face_px: float, seed: int) -> np.ndarray:
    """Rendered faces on a ``grid`` of tiles filling a ``canvas`` (width, height)."""
    from training.render import Scene, identity_from_id, prototype_aus, render_scene

    emotions = ["happiness", "surprise", "anger", "sadness", "fear", "disgust", "neutral"]
    cols, rows = grid
    tile_w, tile_h = canvas[0] // cols, canvas[1] // rows
    out = np.zeros((canvas[1], canvas[0], 3), np.uint8)
    rng = np.random.default_rng(seed)
    for k in range(cols * rows):
        r, c = divmod(k, cols)
        aus = (
            prototype_aus(emotions[k % len(emotions)], 0.8)
            if emotions[k % len(emotions)] != "neutral"
            else np.zeros_like(prototype_aus("happiness", 0.8))
        )
        scene = Scene(seed=int(rng.integers(1 << 30)))
        px = face_px * float(rng.uniform(0.8, 1.2))
        tile = render_scene(identity_from_id(seed * 100 + k), aus, scene, canvas=(tile_w, tile_h), face_px=px).image
        out[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w] = tile
    return out


def build_set() -> list[Photo]:
    astronaut = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    photos = [Photo("astronaut 512 px (PNG)", ASTRONAUT.read_bytes(), astronaut)]
    for side in (1280, 2560):
        big = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.BICUBIC))
        data = _jpeg(big)
        photos.append(Photo(f"astronaut {side} px (JPEG)", data, decode_image(data, max_pixels=10**9)))
    for name, canvas, grid, face_px, seed in (
        ("8 rendered faces 1920x1080 (JPEG)", (1920, 1080), (4, 2), 190.0, 1),
        ("12 rendered faces 1280x720 (JPEG)", (1280, 720), (4, 3), 110.0, 2),
    ):
        data = _jpeg(_scene(canvas, grid, face_px, seed))
        photos.append(Photo(name, data, decode_image(data, max_pixels=10**9)))
    lower = np.asarray(Image.fromarray(astronaut[230:, :]).resize((1600, 884), Image.Resampling.BICUBIC))
    data = _jpeg(lower)
    photos.append(Photo("no face 1600x884 (JPEG)", data, decode_image(data, max_pixels=10**9)))
    return photos


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# The beside column of --also-beside-facenet: our detector in facenet-pytorch's process.
BESIDE = "ours in facenet-pytorch's process"
# The detector's tuning a --variant may change (service.vision.mtcnn.CascadeTuning's fields).
VARIANT_SETTINGS = tuple(CascadeTuning.__dataclass_fields__)


def variant_tuning(name: str, value: int) -> CascadeTuning:
    """The default tuning with one field changed (``name`` case-insensitive)."""
    field = name.lower()
    if field not in VARIANT_SETTINGS:
        raise SystemExit(f"--variant: {name} is not one of {sorted(VARIANT_SETTINGS)}")
    return replace(CascadeTuning(), **{field: value})


def _facenet_detector(threads: int) -> Callable[[np.ndarray], list[tuple[float, ...]]]:
    """facenet-pytorch's MTCNN (``keep_all=True``, CPU, ``threads`` torch threads): pixels -> boxes."""
    import torch

    from tools.bench_detect import _install_torchvision_standin

    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            _install_torchvision_standin()
    from facenet_pytorch import MTCNN as FacenetMTCNN

    torch.set_num_threads(threads)
    ref = FacenetMTCNN(min_face_size=DEFAULT_MIN_FACE_SIZE, keep_all=True, select_largest=False, device="cpu")

    def detect(pixels: np.ndarray) -> list[tuple[float, ...]]:
        boxes, _ = ref.detect(pixels)
        return [] if boxes is None else [tuple(map(float, b)) for b in boxes]

    return detect


def _our_columns(setup: dict) -> dict[str, Callable[[Photo], list[tuple[float, ...]]]]:
    """Our detector's columns of the detection table, by label: photo -> boxes. Each column is
    the service's detection path: the cascade scheduled on detector threads
    (``service.scheduling.DetectorThreads``), sessions sized as the service sizes them."""
    threads, max_side = setup["threads"], setup["max_side"]
    if setup["blas_threads"]:
        threadpool_limits(limits=setup["blas_threads"], user_api="blas")  # as the service runs (single_threaded_blas)

    def runner(
        model_dir: Path, detect_threads: int, tuning: CascadeTuning = DEFAULT_TUNING
    ) -> Callable[[Photo], list[tuple[float, ...]]]:
        cascade = MTCNN.from_dir(model_dir, intra_op_threads=session_threads(detect_threads, threads), tuning=tuning)
        detector = ScheduledDetector(cascade, DetectorThreads(detect_threads))

        def run(photo: Photo) -> list[tuple[float, ...]]:
            picture = Picture.from_array(photo.pixels, max_side=max_side)
            faces = find_faces(
                detector, picture, size=48, min_face_size=DEFAULT_MIN_FACE_SIZE, threshold=None, max_faces=100
            )
            return [f.box for f in faces]

        return run

    shipped = REPO / "models" / "mtcnn"
    columns = {"ours": runner(shipped, threads)}
    for name, value in setup["variants"]:
        columns[f"{name}={value}"] = runner(shipped, threads, variant_tuning(name, value))
    for n in setup["also_threads"]:
        columns[f"{n} detector thread(s)"] = runner(shipped, n)
    if setup["compare"]:
        columns["other"] = runner(setup["compare"], threads)
    return columns


def _serve_timings(conn, kind: str, photos: list[Photo], setup: dict) -> None:
    """A worker process's loop: time ``(label, photo index)`` runs on request, answering
    ``(seconds, boxes)``; ``None`` ends it."""
    try:
        if kind == "facenet":
            if setup["blas_threads"]:  # numpy's, as in our process; torch's own are set by torch.set_num_threads
                threadpool_limits(limits=setup["blas_threads"], user_api="blas")
            detect = _facenet_detector(setup["threads"])
            columns = {"facenet": lambda photo: detect(photo.pixels)}
            if setup["beside"]:
                plain = {**setup, "variants": [], "also_threads": [], "compare": None}
                columns[BESIDE] = _our_columns(plain)["ours"]
        else:
            columns = _our_columns(setup)
        conn.send(list(columns))
        while (request := conn.recv()) is not None:
            label, index = request
            start = time.perf_counter()
            boxes = columns[label](photos[index])
            conn.send((time.perf_counter() - start, boxes))
    except BaseException as exc:  # the parent raises it
        conn.send(exc)
        raise


class _TimingProcess:
    """One side of the comparison in a process of its own (``_serve_timings``): each detector
    keeps its own allocator, caches and thread pools, as a deployed one does, however the runs
    interleave."""

    def __init__(self, kind: str, photos: list[Photo], setup: dict) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_timings, args=(child, kind, photos, setup), daemon=True)
        self._proc.start()
        self.labels = self._answer()

    def _answer(self):
        if not self._conn.poll(600):
            raise RuntimeError("a timing process did not answer within 10 minutes")
        answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run(self, label: str, index: int) -> tuple[float, list[tuple[float, ...]]]:
        """One timed run: seconds, and the boxes found."""
        self._conn.send((label, index))
        return self._answer()

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


def bench_detection(
    photos: list[Photo],
    runs: int,
    threads: int,
    max_side: int,
    variants: list[tuple[str, int]],
    compare: Path | None = None,
    also_threads: list[int] | None = None,
    blas_threads: int = 1,
    beside: bool = False,
) -> list[float]:
    """Prints the per-image table; returns facenet-pytorch's median ms per image.

    Our detector has ``threads`` threads. Each ``(name, value)`` of ``variants`` adds a column:
    our detector with that tuning constant changed, timed interleaved with the rest, and whether
    it still finds facenet's faces; so does each thread count of ``also_threads`` (one thread:
    sessions with ``threads`` ONNX Runtime threads). facenet-pytorch runs in one process, our
    columns in another: in one process, each run inherits the other library's freed memory and
    cold caches, which no deployment of either sees. ``beside`` adds a column of our detector
    in facenet-pytorch's process, each run right after one of facenet-pytorch's, to show it.
    """
    for name, value in variants:
        variant_tuning(name, value)  # an unknown name stops here, before any process starts
    setup = {
        "threads": threads,
        "max_side": max_side,
        "blas_threads": blas_threads,
        "variants": variants,
        "also_threads": also_threads or [],
        "compare": compare,
        "beside": beside,
    }
    ours = _TimingProcess("ours", photos, setup)
    ref = _TimingProcess("facenet", photos, setup)
    try:
        columns = [(ours, label) for label in ours.labels if label not in ("ours", "other")]
        columns += [(ref, BESIDE)] if beside else []
        return _detection_table(photos, runs, threads, max_side, ours, ref, columns, compare)
    finally:
        ours.close()
        ref.close()


def _detection_table(
    photos: list[Photo],
    runs: int,
    threads: int,
    max_side: int,
    ours: _TimingProcess,
    ref: _TimingProcess,
    columns: list[tuple[_TimingProcess, str]],
    compare: Path | None,
) -> list[float]:
    print(
        f"\n## Detection alone ({threads} threads each, each implementation in a process of its own; median of {runs} "
        f"interleaved runs; detect_max_side {max_side})\n"
    )
    extra = "".join(f" {label}: ms / facenet's found |" for _, label in columns)
    extra += f" graphs of {compare}: ms / facenet's found | that ÷ ours |" if compare else ""
    print(
        "| image | ours ms | facenet-pytorch ms | facenet / ours | faces: facenet / ours / facenet's found "
        f"by us |{extra}"
    )
    print("|---|---|---|---|---|" + "---|" * (len(columns) + 2 * bool(compare)))
    ref_ms: list[float] = []
    all_found = True

    def found_of(mine: list, theirs: list) -> int:
        return sum(any(_iou(t, box) >= 0.5 for box in mine) for t in theirs)

    for index, photo in enumerate(photos):
        _, mine = ours.run("ours", index)  # warm-up, and the faces
        _, theirs = ref.run("facenet", index)
        found = found_of(mine, theirs)
        all_found &= found == len(theirs)
        column_found = [found_of(worker.run(label, index)[1], theirs) for worker, label in columns]
        other_found = found_of(ours.run("other", index)[1], theirs) if compare else 0
        o_times, r_times, other_times = [], [], []
        column_times: list[list[float]] = [[] for _ in columns]
        for _ in range(runs):  # interleaved, so all see the same machine
            o_times.append(ours.run("ours", index)[0])
            r_times.append(ref.run("facenet", index)[0])
            for (worker, label), times in zip(columns, column_times, strict=True):
                times.append(worker.run(label, index)[0])
            if compare:
                other_times.append(ours.run("other", index)[0])
        o, r = 1000.0 * statistics.median(o_times), 1000.0 * statistics.median(r_times)
        ref_ms.append(r)
        cells = "".join(
            f" {1000.0 * statistics.median(t):.0f} / {f} |" for t, f in zip(column_times, column_found, strict=True)
        )
        if compare:
            other = 1000.0 * statistics.median(other_times)
            cells += f" {other:.0f} / {other_found} | {other / o:.2f}x |"
        print(f"| {photo.name} | {o:.0f} | {r:.0f} | {r / o:.2f}x | {len(theirs)} / {len(mine)} / {found} |{cells}")
    print(f"\nevery face facenet-pytorch finds is found by us: {'yes' if all_found else 'NO'}")
    return ref_ms


def bench_http(
    photos: list[Photo],
    rounds: int,
    clients_list: list[int],
    env_extra: dict[str, str],
    max_seconds: float,
    repo: Path = REPO,
) -> dict[int, float]:
    """Prints the HTTP tables; returns images/s per client count. The server is the service of
    the checkout ``repo`` (this one by default)."""
    # MALLOC_ARENA_MAX=2 as the image and `make serve` run the service (docs/deploy.md).
    env = {
        "PFVIT_PROVIDERS": os.environ.get("PFVIT_PROVIDERS", "auto"),
        "PFVIT_LOG_LEVEL": "warning",
        "MALLOC_ARENA_MAX": "2",
        **env_extra,
    }
    proc, url = start_server(env, repo=repo)
    rates: dict[int, float] = {}
    try:
        wait_until_ready(proc, url, timeout_s=120)
        with httpx.Client(timeout=120) as warm:
            for photo in photos:
                r = warm.post(url + "/v1/recognize", files={"images": ("img", photo.data)})
                r.raise_for_status()
        idle, _ = rss_mib(proc.pid)
        print(f"\nserver settings: {env_extra or 'defaults'}; RSS after warm-up {idle:.0f} MiB")
        for clients in clients_list:
            latencies: dict[str, list[float]] = {p.name: [] for p in photos}
            errors = 0
            peak = [idle]
            stop = threading.Event()

            def sample_rss() -> None:
                while not stop.wait(0.1):
                    peak[0] = max(peak[0], rss_mib(proc.pid)[0])

            deadline = time.monotonic() + max_seconds

            def client(k: int) -> int:
                sent = 0
                nonlocal errors
                with httpx.Client(timeout=120) as http:
                    for i in range(rounds * len(photos)):
                        if time.monotonic() > deadline:
                            break
                        photo = photos[(i + k) % len(photos)]  # clients start at different photos
                        t0 = time.perf_counter()
                        r = http.post(url + "/v1/recognize", files={"images": ("img", photo.data)})
                        latencies[photo.name].append(time.perf_counter() - t0)
                        errors += r.status_code != 200
                        sent += 1
                return sent

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                total = sum(pool.map(client, range(clients)))
            wall = time.perf_counter() - start
            stop.set()
            sampler.join()
            rates[clients] = total / wall
            print(
                f"\n### {clients} client(s): {total} requests in {wall:.1f} s, {rates[clients]:.2f} images/s, "
                f"{errors} errors, server peak RSS {peak[0]:.0f} MiB\n"
            )
            print("| image | p50 ms | p95 ms |")
            print("|---|---|---|")
            for photo in photos:
                lat = latencies[photo.name]
                if lat:
                    print(f"| {photo.name} | {1000 * statistics.median(lat):.0f} | {1000 * percentile(lat, 95):.0f} |")
    finally:
        stop_server(proc)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="timed detection runs per image and implementation")
    ap.add_argument("--rounds", type=int, default=4, help="times each client sends the whole set")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="detection alone: torch's threads, and our detector's threads",
    )
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time bound per HTTP level")
    ap.add_argument("--quick", action="store_true", help="2 runs, 1 round")
    ap.add_argument(
        "--sweep", action="store_true", help="HTTP at 4 clients over detector-thread/concurrency settings only"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=(
            "also time detection with one field of the detector's tuning changed "
            f"({', '.join(VARIANT_SETTINGS)}); repeatable"
        ),
    )
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the HTTP part's server (a PFVIT_ setting, MALLOC_*, ...); repeatable",
    )
    ap.add_argument("--detection-only", action="store_true", help="skip the HTTP part")
    ap.add_argument(
        "--http-only",
        action="store_true",
        help=(
            "skip detection alone (and with it facenet-pytorch): the HTTP part only, e.g. to compare two "
            "checkouts' servers"
        ),
    )
    ap.add_argument(
        "--clients",
        type=int,
        action="append",
        metavar="N",
        help="client threads of an HTTP level (default: a level of 1, then one of 4); repeatable",
    )
    ap.add_argument(
        "--also-detect-threads",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help=(
            "also time our cascade with N detector threads (N=1: sessions with --threads threads), "
            "interleaved; repeatable"
        ),
    )
    ap.add_argument(
        "--also-beside-facenet",
        action="store_true",
        help="also time our detector inside facenet-pytorch's process, each run right after one of facenet-pytorch's",
    )
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        metavar="N",
        help="numpy's BLAS threads in this process: 1 as the service runs it; 0 leaves the library's default",
    )
    ap.add_argument(
        "--compare-models",
        type=Path,
        metavar="DIR",
        help=(
            "also time our cascade with the detector graphs of DIR (a models/mtcnn folder, card included), interleaved"
        ),
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.rounds = 2, 1

    photos = build_set()
    if args.blas_threads:
        threadpool_limits(
            limits=args.blas_threads, user_api="blas"
        )  # the service keeps 1 (service.runtime.single_threaded_blas)
    print(
        f"set: {len(photos)} images; cores here: {os.cpu_count()}; numpy BLAS threads: "
        f"{args.blas_threads or 'library default'}"
    )
    if args.sweep:
        print("\n## Detector threads and concurrency (HTTP, 4 clients)")
        for threads, gate in ((1, 1), (2, 1), (2, 2), (3, 1), (4, 2)):
            bench_http(
                photos,
                args.rounds,
                [4],
                {"PFVIT_DETECT_THREADS": str(threads), "PFVIT_MAX_CONCURRENT_INFERENCE": str(gate)},
                args.max_seconds,
            )
        return 0

    variants = [(name, int(value)) for name, _, value in (v.partition("=") for v in args.variant)]
    server_env = dict(item.partition("=")[::2] for item in args.server_env)
    clients = args.clients or [1, 4]
    if args.http_only:
        for level, rate in bench_http(photos, args.rounds, clients, server_env, args.max_seconds).items():
            print(f"whole requests over HTTP, {level} client(s): {rate:.2f} images/s")
        return 0
    max_side = Settings(_env_file=None).detect_max_side
    ref_ms = bench_detection(
        photos,
        args.runs,
        args.threads,
        max_side,
        variants,
        args.compare_models,
        args.also_detect_threads,
        args.blas_threads,
        args.also_beside_facenet,
    )
    facenet_rate = len(ref_ms) / (sum(ref_ms) / 1000.0)
    if args.detection_only:
        print(f"\nfacenet-pytorch detection alone on the set: {facenet_rate:.2f} images/s ({args.threads} threads)")
        return 0
    rates = bench_http(photos, args.rounds, clients, server_env, args.max_seconds)
    print("\n## Summary\n")
    print(f"facenet-pytorch detection alone on the set: {facenet_rate:.2f} images/s ({args.threads} threads)")
    for clients, rate in rates.items():
        print(
            f"whole requests over HTTP, {clients} client(s): {rate:.2f} images/s = {rate / facenet_rate:.2f}x "
            "facenet-pytorch detection alone"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
