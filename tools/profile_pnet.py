"""Where P-Net's time goes: ONNX Runtime's own per-node profile of P-Net over the image pyramid
of the fixture photo, by operator type.

    python tools/profile_pnet.py                                  # the shipped graph, 1280 px
    python tools/profile_pnet.py --models /tmp/mtcnn-before       # another models/mtcnn folder

The photo is the astronaut fixture upscaled to ``--side`` px (as ``tools/bench_photos.py``
builds its 1280 px photo); the pyramid is the cascade's own (``service.vision.mtcnn``), with the
default minimum face of 20 px, and every level goes through P-Net whole (no bands). Prints the
mean kernel time of one pass over the pyramid and each operator type's share, as markdown.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from service.vision import mtcnn  # noqa: E402

ASTRONAUT = REPO / "tests" / "fixtures" / "astronaut.png"


def pyramid(side: int) -> list[np.ndarray]:
    """The normalised ``[1, 3, h, w]`` P-Net inputs of the fixture photo at ``side`` px."""
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    height, width = photo.shape[:2]
    scales = mtcnn.pyramid_scales(height, width, mtcnn.DEFAULT_MIN_FACE_SIZE, mtcnn.DEFAULT_FACTOR)
    sizes = [mtcnn.level_size(height, width, s) for s in scales]
    return [mtcnn.normalise_pixels(level)[None] for level in mtcnn.pyramid_levels(mtcnn.as_pil(photo), sizes)]


def profile(graph: Path, levels: list[np.ndarray], runs: int, threads: int) -> dict[str, float]:
    """Mean kernel milliseconds per pass over ``levels``, by operator type."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the service runs it
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "pnet")
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for level in levels:  # warm-up, outside the profile's totals below
            session.run(None, {name: level})
        session.end_profiling()
        opts.profile_file_prefix = str(Path(tmp) / "timed")
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            for level in levels:
                session.run(None, {name: level})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / runs
    return dict(by_op)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=REPO / "models" / "mtcnn", help="folder holding pnet.onnx")
    ap.add_argument("--side", type=int, default=1280, help="photo side in pixels")
    ap.add_argument("--runs", type=int, default=5, help="passes over the pyramid that are timed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    levels = pyramid(args.side)
    by_op = profile(args.models / "pnet.onnx", levels, args.runs, args.threads)
    total = sum(by_op.values())
    print(
        f"P-Net of {args.models}, {args.side} px photo, {len(levels)} levels, {args.threads} threads: "
        f"{total:.1f} ms of kernels per pass (mean of {args.runs})\n"
    )
    print("| operator | ms | share |")
    print("|---|---|---|")
    for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"| {op} | {ms:.1f} | {100 * ms / total:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
