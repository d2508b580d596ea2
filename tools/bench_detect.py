"""Time MTCNN face detection: our numpy + ONNX Runtime cascade vs facenet-pytorch's own.

    python tools/bench_detect.py [--image tests/fixtures/astronaut.png] [--runs 30] [--threads 1]

Prints median and p95 per image over ``--runs`` timed runs (after ``--warmup`` untimed ones)
for ``service.vision.mtcnn.MTCNN``, and, when torch and facenet-pytorch are importable, for
``facenet_pytorch.MTCNN`` with the same settings on the same array, both detections side by
side and the time ratio. Both sides get the same thread count (``torch.set_num_threads`` and
ONNX Runtime's intra-op threads), printed with the results.

facenet-pytorch imports ``torchvision`` (for ``batched_nms`` and an unused transforms module),
which cannot be installed here. When it is missing, this script registers a small stand-in
``torchvision`` in ``sys.modules`` before importing facenet_pytorch: ``batched_nms`` written
in plain torch with torchvision's semantics. Its Python loop may be slower than torchvision's
C++ kernel, so the time spent inside it is measured and reported, and facenet's time is also
given with it subtracted (the comparison that favours facenet).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, MTCNN  # noqa: E402

Row = tuple[np.ndarray, float, np.ndarray]  # box (4,), score, landmarks (5, 2)

# Seconds spent inside the stand-in batched_nms since the last reset (facenet side only).
_standin_nms_s = [0.0]


def _install_torchvision_standin() -> None:
    """Register a minimal ``torchvision`` (only what facenet's MTCNN touches) in ``sys.modules``."""
    import torch

    def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        # torchvision.ops.nms: areas without +1, drop IoU > threshold, keep order = score desc.
        order = torch.argsort(scores, descending=True)
        boxes = boxes[order]
        x1, y1, x2, y2 = boxes.unbind(1)
        area = (x2 - x1) * (y2 - y1)
        iw = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
        ih = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
        inter = iw * ih
        iou = inter / (area[:, None] + area[None] - inter)  # (N, N)
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        keep: list[int] = []
        for i in range(len(boxes)):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= iou[i] > iou_threshold
        return order[torch.as_tensor(keep, dtype=torch.long)]

    def batched_nms(
        boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
    ) -> torch.Tensor:
        start = time.perf_counter()
        if boxes.numel() == 0:
            keep = torch.empty((0,), dtype=torch.long)
        else:
            # torchvision's trick: shift each group so boxes of different groups never overlap.
            offsets = idxs.to(boxes) * (boxes.max() + 1)
            keep = nms(boxes + offsets[:, None], scores, iou_threshold)
        _standin_nms_s[0] += time.perf_counter() - start
        return keep

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")  # imported, unused by detect()
    boxes_mod.batched_nms = batched_nms
    ops.boxes = boxes_mod
    transforms.functional = functional
    tv.ops, tv.transforms = ops, transforms
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes_mod,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )
    if importlib.util.find_spec("requests") is None:
        # Only facenet's InceptionResnetV1 downloader uses requests; the import must merely succeed.
        requests = types.ModuleType("requests")
        adapters = types.ModuleType("requests.adapters")
        adapters.HTTPAdapter = object
        requests.adapters = adapters
        sys.modules.update({"requests": requests, "requests.adapters": adapters})


def time_runs(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Seconds per call over ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    """(median, p95) in milliseconds."""
    ms = np.asarray(times) * 1000.0
    return float(statistics.median(ms)), float(np.percentile(ms, 95))


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"  {title}: {len(rows)} face(s)")
    for box, score, marks in rows:
        pts = " ".join(f"({x:.1f}, {y:.1f})" for x, y in marks)
        print(f"    box [{', '.join(f'{v:.1f}' for v in box)}]  p={score:.5f}  landmarks {pts}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MTCNN detection time: ONNX Runtime cascade vs facenet-pytorch")
    parser.add_argument("--image", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "astronaut.png")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "models" / "mtcnn")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads = ORT intra-op threads")
    parser.add_argument("--min-face-size", type=int, default=DEFAULT_MIN_FACE_SIZE)
    args = parser.parse_args(argv)

    image = np.asarray(Image.open(args.image).convert("RGB"))  # (H, W, 3) uint8 RGB
    print(
        f"image {args.image.name} {image.shape[1]}x{image.shape[0]}, min_face_size {args.min_face_size}, "
        f"runs {args.runs} after {args.warmup} warm-up, threads {args.threads}"
    )

    ours = MTCNN.from_dir(args.model_dir, intra_op_threads=args.threads, min_face_size=args.min_face_size)
    ours_rows: list[Row] = [(np.asarray(d.box), d.score, d.landmarks) for d in ours.detect(image)]
    ours_med, ours_p95 = summary(time_runs(lambda: ours.detect(image), args.runs, args.warmup))
    print(
        f"ours (numpy + onnxruntime, intra_op_threads={args.threads}): median {ours_med:.1f} ms, p95 {ours_p95:.1f} ms"
    )

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("facenet_pytorch") is None:
        print("facenet-pytorch or torch not importable: reference timing skipped")
        print_rows("ours", ours_rows)
        return

    import torch

    if importlib.util.find_spec("torchvision") is None:
        _install_torchvision_standin()
        standin = True
    else:
        standin = False
    from facenet_pytorch import MTCNN as FacenetMTCNN

    torch.set_num_threads(args.threads)
    ref = FacenetMTCNN(min_face_size=args.min_face_size, keep_all=True, select_largest=False, device="cpu")
    boxes, probs, points = ref.detect(image, landmarks=True)
    ref_rows: list[Row] = [] if boxes is None else list(zip(boxes, (float(p) for p in probs), points, strict=True))
    _standin_nms_s[0] = 0.0
    ref_times = time_runs(lambda: ref.detect(image), args.runs, args.warmup)
    # The stand-in's mean time per call, over warm-up and timed calls alike.
    nms_ms = _standin_nms_s[0] * 1000.0 / (args.runs + args.warmup)
    ref_med, ref_p95 = summary(ref_times)
    print(
        f"facenet-pytorch (torch {torch.__version__}, set_num_threads={torch.get_num_threads()}): "
        f"median {ref_med:.1f} ms, p95 {ref_p95:.1f} ms"
    )
    print(f"ratio facenet / ours (median): {ref_med / ours_med:.2f}x")
    if standin:
        print(
            f"  stand-in batched_nms: {nms_ms:.1f} ms per call; facenet median without it "
            f"{ref_med - nms_ms:.1f} ms, ratio {(ref_med - nms_ms) / ours_med:.2f}x"
        )

    print("detections:")
    print_rows("ours   ", ours_rows)
    print_rows("facenet", ref_rows)
    if len(ours_rows) == len(ref_rows) and ours_rows:
        box_diff = max(float(np.max(np.abs(a[0] - b[0]))) for a, b in zip(ours_rows, ref_rows, strict=True))
        mark_diff = max(float(np.max(np.abs(a[2] - b[2]))) for a, b in zip(ours_rows, ref_rows, strict=True))
        print(f"  max |box diff| {box_diff:.2e} px, max |landmark diff| {mark_diff:.2e} px")


if __name__ == "__main__":
    main()
