"""Two checkouts side by side in one run: is a change as fast as the code before it?

    git worktree add /tmp/before HEAD~1
    python tools/bench_ab.py /tmp/before                  # this checkout (B) against /tmp/before (A)
    python tools/bench_ab.py /tmp/before --quick          # fewer runs, for a smoke test

On the photo set of ``tools/bench_photos.py`` (astronaut 512, 1280 and 2560 px, two scenes of
rendered faces, a photo with no face):

1. **Detection alone**: the service's detection path (``find_faces`` on the picture bounded by the
   default ``detect_max_side``, one detector thread per core, single-threaded sessions, one BLAS
   thread) of each checkout in a process of its own, that checkout's code on ``sys.path``. The
   runs interleave, A then B, photo by photo, and the table gives each side's median, B ÷ A,
   and whether both found the very same boxes.
2. **Whole requests** (skipped with ``--detection-only``): each checkout's ``python -m service``
   with its default settings on 127.0.0.1, both serving the same model files (A's ``models/``,
   or ``--models-dir``) so that only the code differs, in turn, A B A B, 4 clients each sending
   the set ``--rounds`` times; images/s per side (the mean of its two turns) and B ÷ A.

Every loop is bounded in count and time; both sides run on the same cores, never at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The detection side of one checkout: reads "index" lines, answers "seconds boxes-json" lines.
# It must run against either side's API: a scheduled cascade (service.scheduling) or, before it
# existed, a cascade that owned its threads.
CHILD = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(limits=1, user_api="blas")
import time
from service.config import Settings
from service.vision.faces import find_faces
from service.vision.imaging import Picture
from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, MTCNN, session_threads
threads, models = int(sys.argv[1]), sys.argv[2]
try:
    from service.scheduling import DetectorThreads, ScheduledDetector
    cascade = MTCNN.from_dir(models, intra_op_threads=session_threads(threads, threads))
    detector = ScheduledDetector(cascade, DetectorThreads(threads))
except ImportError:
    detector = MTCNN.from_dir(models, intra_op_threads=threads, threads=threads)
max_side = Settings(_env_file=None).detect_max_side
photos = np.load(sys.argv[3])
arrays = [photos[f"arr_{i}"] for i in range(len(photos.files))]
print("ready", flush=True)
for line in sys.stdin:
    pixels = arrays[int(line)]
    start = time.perf_counter()
    picture = Picture.from_array(pixels, max_side=max_side)
    faces = find_faces(detector, picture, size=48, min_face_size=DEFAULT_MIN_FACE_SIZE, threshold=None, max_faces=100)
    seconds = time.perf_counter() - start
    print(seconds, json.dumps([list(f.box) for f in faces]), flush=True)
"""


class Side:
    """One checkout's detection process."""

    def __init__(self, tree: Path, threads: int, photos_file: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(threads), str(tree / "models" / "mtcnn"), str(photos_file)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._line() != "ready":
            raise RuntimeError(f"the detection process of {tree} did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a detection process exited with {self.proc.wait()}")
        return line.strip()

    def run(self, index: int) -> tuple[float, list[list[float]]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()
        seconds, boxes = self._line().split(" ", 1)
        return float(seconds), json.loads(boxes)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_detection(before: Path, after: Path, runs: int, threads: int) -> list[float]:
    """Prints the detection table; returns B ÷ A per photo."""
    from tools.bench_photos import build_set

    photos = build_set()
    with tempfile.TemporaryDirectory() as tmp:
        photos_file = Path(tmp) / "photos.npz"
        np.savez(photos_file, *[p.pixels for p in photos])  # arr_0, arr_1, ... in set order
        sides = [Side(before, threads, photos_file), Side(after, threads, photos_file)]
        try:
            print(
                f"\n## Detection alone: {threads} detector threads, median of {runs} interleaved runs "
                f"(A = {before}, B = {after})\n"
            )
            print("| image | A ms | B ms | B ÷ A | same boxes |")
            print("|---|---|---|---|---|")
            ratios = []
            for index, photo in enumerate(photos):
                for side in sides:
                    side.run(index)  # warm-up
                times: list[list[float]] = [[], []]
                boxes: list[list[list[float]]] = [[], []]
                for _ in range(runs):
                    for k, side in enumerate(sides):
                        seconds, boxes[k] = side.run(index)
                        times[k].append(seconds)
                a, b = (1000 * statistics.median(t) for t in times)
                ratios.append(b / a)
                same = "yes" if boxes[0] == boxes[1] else "NO"
                print(f"| {photo.name} | {a:.0f} | {b:.0f} | {b / a:.3f} | {same} |")
        finally:
            for side in sides:
                side.close()
    return ratios


def bench_requests(before: Path, after: Path, rounds: int, max_seconds: float, models: Path) -> None:
    from tools.bench_photos import bench_http, build_set

    photos = build_set()
    rates: dict[str, list[float]] = {"A": [], "B": []}
    for _ in range(2):
        for name, tree in (("A", before), ("B", after)):
            print(f"\n## Whole requests, side {name} ({tree})")
            env = {"PFVIT_MODELS_DIR": str(models)}
            rates[name].append(bench_http(photos, rounds, [4], env, max_seconds, repo=tree)[4])
    a, b = (statistics.fmean(rates[k]) for k in ("A", "B"))
    print("\n## Whole requests over HTTP, 4 clients (mean of two turns each)\n")
    print("| side | images/s per turn | mean | B ÷ A |")
    print("|---|---|---|---|")
    print(f"| A | {' / '.join(f'{r:.2f}' for r in rates['A'])} | {a:.2f} | |")
    print(f"| B | {' / '.join(f'{r:.2f}' for r in rates['B'])} | {b:.2f} | {b / a:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="the other checkout (A), e.g. a git worktree of the previous commit")
    ap.add_argument("--after", type=Path, default=REPO, help="the checkout compared with it (B; default: this one)")
    ap.add_argument("--runs", type=int, default=9, help="timed detection runs per image and side")
    ap.add_argument("--rounds", type=int, default=3, help="times each HTTP client sends the whole set, per turn")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="detector threads of both sides")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time bound per HTTP turn")
    ap.add_argument("--detection-only", action="store_true", help="skip the whole requests")
    ap.add_argument("--models-dir", type=Path, help="the model files both servers serve (default: A's models/)")
    ap.add_argument("--quick", action="store_true", help="2 runs, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.rounds = 2, 1
    for tree in (args.before, args.after):
        if not (tree / "service" / "vision" / "mtcnn.py").is_file():
            raise SystemExit(f"{tree} is not a checkout of this project")
    ratios = bench_detection(args.before.resolve(), args.after.resolve(), args.runs, args.threads)
    print(f"\ndetection B ÷ A: {min(ratios):.3f} to {max(ratios):.3f}")
    if not args.detection_only:
        models = (args.models_dir or args.before / "models").resolve()
        bench_requests(args.before.resolve(), args.after.resolve(), args.rounds, args.max_seconds, models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
