"""Images per second of `pfvit-batch` against `pfvit-recognize` pointed at a local server, same files, same run.

    python tools/bench_batch.py                 # 300 photos made from the fixture
    python tools/bench_batch.py --folder DIR    # your own photos

The photos are transforms of the fixture (turned, scaled, cropped, JPEG at several qualities;
one face each, 160 to 1000 px). `pfvit-recognize` sends them to a service started here on
loopback with its default settings (already loaded and warmed up: a service runs for long) at
its default concurrency; then `pfvit-batch` runs them on a local Ray instance it starts itself,
with its default actors. Both are timed from command start to exit. `pfvit-batch`'s time
includes starting Ray and loading the models in every actor; its rate once the first row came
back is printed too. The ratio is batch images/s over recognize images/s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.loopback import serving  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "astronaut.png"


def make_photos(folder: Path, count: int) -> None:
    """``count`` photos from the fixture, cycling through turns, scales, crops and JPEG qualities."""
    base = Image.open(FIXTURE).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        kind = i % 4
        if kind == 0:
            img, fmt = base.rotate((i % 31) - 15, resample=Image.Resampling.BILINEAR, fillcolor=(40, 40, 40)), "PNG"
        elif kind == 1:
            side = 320 + (i * 37) % 680
            img, fmt = base.resize((side, side), Image.Resampling.LANCZOS), "JPEG"
        elif kind == 2:
            left, top = (i * 13) % 150, (i * 7) % 40
            img, fmt = base.crop((left, top, left + 340, top + 300)), "JPEG"
        else:
            img, fmt = base, "JPEG"
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 50 + (i * 11) % 46} if fmt == "JPEG" else {}))
        (folder / f"{i:05d}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(buf.getvalue())


def timed(cmd: list[str], env: dict[str, str], timeout_s: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  {proc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    return wall


def faces_in(jsonl: Path) -> int:
    return sum(1 for line in jsonl.read_text().splitlines() if json.loads(line).get("face") is not None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=300, help="photos to make from the fixture (default 300)")
    p.add_argument("--folder", type=Path, help="use the photos in this folder instead")
    p.add_argument("--concurrency", type=int, default=2, help="pfvit-recognize's requests in flight (its default, 2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds each command may take")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFVIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        folder = args.folder or work / "photos"
        if args.folder is None:
            make_photos(folder, args.images)
        count = sum(1 for f in folder.rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"})
        print(f"{count} photos in {folder}; {os.cpu_count()} CPUs", file=sys.stderr)

        with serving({"PFVIT_PROVIDERS": "cpu"}, timeout_s=120) as url:
            recognize_s = timed(
                [
                    sys.executable,
                    "-m",
                    "pfvit_client",
                    str(folder),
                    "--url",
                    url,
                    "--concurrency",
                    str(args.concurrency),
                    "--jsonl",
                    str(work / "recognize.jsonl"),
                    "--no-progress",
                ],
                env,
                args.timeout,
            )
        batch_s = timed([sys.executable, "-m", "pfvit_batch", str(folder), "--output", str(work / "batch.jsonl"),
                         "--stats-json", str(work / "stats.json"), "--no-progress"], env, args.timeout)  # fmt: skip
        stats = json.loads((work / "stats.json").read_text())
        faces = (faces_in(work / "recognize.jsonl"), faces_in(work / "batch.jsonl"))

    recognize_rate, batch_rate = count / recognize_s, count / batch_s
    steady = count / max(1e-9, stats["wall_s"] - stats["first_row_s"])
    print(
        f"pfvit-recognize (local server, concurrency {args.concurrency}): {recognize_s:7.1f} s  "
        f"{recognize_rate:6.2f} images/s"
    )
    print(
        f"pfvit-batch (local Ray instance):                 {batch_s:7.1f} s  {batch_rate:6.2f} images/s "
        f"(Ray start {stats['ray_start_s']:.1f} s, first row after {stats['first_row_s']:.1f} s; {steady:.2f} "
        "images/s after it)"
    )
    print(
        f"ratio batch / recognize: {batch_rate / recognize_rate:.2f} (after the first row: "
        f"{steady / recognize_rate:.2f})"
    )
    print(f"faces found: recognize {faces[0]}, batch {faces[1]}")
    return 0 if faces[0] == faces[1] else 1


if __name__ == "__main__":
    sys.exit(main())
