"""Command line: ``python -m training.render grid --out grid.png`` or ``... speed --size 112 --n 500``.

``grid``: one row per emotion (neutral first); columns alternate sample and its true poker
face, so each pair shows what the expression changed.
``speed``: renders ``n`` samples (2 faces each) in one thread and prints faces per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training.plots import image_grid_png
from training.render.dataset import render_sample
from training.render.facs import EMOTIONS


def _chw(images: list[np.ndarray]) -> np.ndarray:
    """``(H, W, 3) uint8`` images -> one ``(B, 3, H, W)`` float32 batch in [0, 1]."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def grid(out: str, size: int, cols: int, seed: int) -> None:
    """Write a PNG grid: rows are emotions, columns alternate sample / poker face."""
    columns: list[tuple[str, np.ndarray]] = []
    for c in range(cols):
        samples = [render_sample((seed, r, c), size, label=r) for r in range(len(EMOTIONS))]
        columns.append((f"face {c + 1}", _chw([s.image for s in samples])))
        columns.append((f"poker {c + 1}", _chw([s.poker_face for s in samples])))
    image_grid_png(columns, out)
    print(f"wrote {out}: rows {', '.join(EMOTIONS)}; columns alternate sample | poker face")


def speed(size: int, n: int) -> None:
    """Single-thread throughput of sample rendering (image + poker face = 2 faces)."""
    import torch  # only to pin torch's own thread pool; rendering itself is numpy

    torch.set_num_threads(1)
    render_sample(0, size)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        render_sample(i, size)
    dt = time.perf_counter() - t0
    print(
        f"size {size}: {n} samples ({2 * n} faces) in {dt:.2f} s = {2 * n / dt:.0f} faces/s, "
        f"{n / dt:.0f} pairs/s, {1000 * dt / (2 * n):.2f} ms/face"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.render", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="write a PNG grid of samples and their poker faces")
    g.add_argument("--out", default="grid.png")
    g.add_argument("--size", type=int, default=112)
    g.add_argument("--cols", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("speed", help="faces per second on one thread")
    s.add_argument("--size", type=int, default=112)
    s.add_argument("--n", type=int, default=500)
    args = parser.parse_args(argv)
    if args.cmd == "grid":
        grid(args.out, args.size, args.cols, args.seed)
    else:
        speed(args.size, args.n)


if __name__ == "__main__":
    main()
