"""MTCNN face detection: the P-Net -> R-Net -> O-Net cascade in numpy over ONNX Runtime.

The networks are facenet-pytorch 2.6.0's (converted by ``tools/convert_mtcnn.py``); this module
follows facenet-pytorch's ``detect_face`` step for step (no torch, no OpenCV), so the served
detector finds the same faces with the same boxes to within a pixel or two:

1. image pyramid: scales ``12 / min_face_size * factor**k`` while the short side stays >= 12 px;
   each level is an area resize (Pillow's box filter), from the image or from the level two
   steps before (``pyramid_levels``). facenet resizes every level from the full image with
   torch's adaptive average pooling; this costs a fraction of that and moves boxes by a pixel
   or two;
2. P-Net per level -> cells with face probability >= ``thresholds[0]`` -> boxes; NMS (IoU 0.5)
   per level, then NMS (IoU 0.7) across levels; box regression; square-up;
3. crops (clipped to the image, as facenet does) resized to 24x24 exactly as facenet resizes
   them (adaptive average pooling) -> R-Net, score
   > ``thresholds[1]``, NMS 0.7, regression, square-up;
4. crops resized to 48x48 -> O-Net, score > ``thresholds[2]``, landmarks, regression, and a
   final NMS that divides the overlap by the *smaller* box ("Min" mode, IoM 0.7).

Conventions: images are ``(H, W, 3) uint8`` RGB; network inputs are ``(B, 3, H, W) float32``
normalised as ``(x - 127.5) * 0.0078125`` with no height/width transpose (facenet-pytorch's
weights were converted for the un-transposed layout; the Caffe original transposes instead).
Boxes are ``x1, y1, x2, y2`` in image pixels; the NMS flavours (with or without the ``+1`` in
areas) follow facenet-pytorch exactly, because they decide borderline keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from service.card import ModelCard, load_card, verify_files
from service.errors import InvalidImage, ModelLoadError

if TYPE_CHECKING:
    from service.runtime import SessionSpec

# Detection defaults, facenet-pytorch's. The one declaration: the service settings
# (``service.config``) and the dataset aligner (``training/data/align_dataset.py``) take theirs
# from here, so training crops and served requests are detected alike.
DEFAULT_MIN_FACE_SIZE = 20  # pixels; the face side the first pyramid level maps onto P-Net's cell
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)  # face probability kept by P-Net, R-Net, O-Net
DEFAULT_FACTOR = 0.709  # image-pyramid scale step
# pixels; the smallest min_face_size a caller may ask for: below it the first pyramid level
# upsamples the image more than 12/8 = 1.5x, and the work grows with the square of that.
MIN_FACE_SIZE_FLOOR = 8

GRAPH_NAMES = ("pnet", "rnet", "onet")
PNET_CELL = 12  # P-Net's receptive field in pixels of the resized level
PNET_STRIDE = 2  # one P-Net output cell per 2 pixels of the resized level
RNET_SIZE = 24
ONET_SIZE = 48


@dataclass(frozen=True)
class CascadeTuning:
    """How the cascade cuts its work into calls; the detections do not depend on it (only
    ``pyramid_direct`` moves boxes, by resizing levels from other levels). Given at
    construction; ``tools/bench_photos.py --variant NAME=VALUE`` times a changed field.

    Args:
        pnet_band_pixels: pixels of one P-Net call at most: bigger pyramid levels run in
            horizontal bands. P-Net's convolutions unfold their input (im2col), so one call on the
            768 px level of a 1280 px photo holds ~150 MiB at once; bands of this size hold a
            tenth of that. Bands give the whole level's output exactly (tests/test_mtcnn.py);
            their speed against one call is a wash (docs/benchmarks.md).
        pyramid_direct: pyramid levels resized from the image itself; the rest from the level
            two steps up (:func:`pyramid_levels`).
        crop_batch: R-Net candidates per call at most, and O-Net's as many pixels (a quarter as
            many 48 px crops): smaller calls balance better over the detector's threads, and on
            single-threaded sessions cost no more per crop than 256 a call (docs/benchmarks.md).
            The pixel bound also bounds the largest tensor of a call (O-Net's first convolution:
            16 crops x 48 channels x 46 x 46 floats, 6.5 MB): the C allocator keeps freed
            blocks up to the largest size it has seen in its heap, so bigger calls grew the
            server's resident memory under load by about 80 MiB (docs/benchmarks.md).
    """

    pnet_band_pixels: int = 80_000
    pyramid_direct: int = 3
    crop_batch: int = 64

    def __post_init__(self) -> None:
        for name in ("pnet_band_pixels", "pyramid_direct", "crop_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


DEFAULT_TUNING = CascadeTuning()

T = TypeVar("T")


class Workers(Protocol):
    """Where the pieces of one detection run; the scheduler (``service.scheduling``) hands the
    cascade one per call. The cascade starts independent pieces (pyramid levels, P-Net bands,
    R-Net and O-Net calls) with :meth:`start` and collects them in order."""

    @property
    def width(self) -> int:
        """Threads that share the pieces (1: they run one after another)."""
        ...

    def start(self, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
        """Start ``fn(*args)``; returns the call that waits for its result (raising its error)."""
        ...


class Inline:
    """Every piece runs at once in the calling thread: a detection with no threads to share."""

    width = 1

    def start(self, fn: Callable[..., T], *args: Any) -> Callable[[], T]:
        value = fn(*args)
        return lambda: value


INLINE = Inline()
# A crop window taller than this many times the crop has its rows summed per output row
# (``_row_cell_means``) rather than multiplied through the pooling matrix: faster from about 7
# input rows per output row on (measured on the benchmark set's candidates, docs/benchmarks.md).
_CELL_SUM_ROWS = 7
_NMS_BLOCK = 256  # boxes per block of the overlap matrix: at most 256 x N entries at once


class Session(Protocol):
    """What the cascade needs from a network: an ``onnxruntime.InferenceSession`` or a fake."""

    def get_inputs(self) -> Sequence[Any]: ...

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class FaceDetection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float  # O-Net face probability
    landmarks: np.ndarray  # (5, 2) float (x, y): left eye, right eye, nose, left mouth, right mouth


# --- cascade pieces (pure functions on arrays) --------------------------------------------


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> list[float]:
    """Scales of the image pyramid, exactly as facenet-pytorch computes them.

    The first level maps a ``min_face_size`` face onto P-Net's 12 px cell; each further level
    shrinks by ``factor`` until the short side would drop below 12 px.
    """
    if min_face_size <= 0:
        raise ValueError(f"min_face_size must be positive, got {min_face_size}")
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    scale = PNET_CELL / min_face_size
    min_side = min(height, width) * scale
    scales: list[float] = []
    while min_side >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        min_side *= factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of a pyramid level; facenet's ``int(h * scale + 1)`` (a ceil, mostly)."""
    return int(height * scale + 1), int(width * scale + 1)


def as_pil(image: np.ndarray) -> Image.Image:
    """``(H, W, 3) uint8`` RGB array -> Pillow image (one copy; every resize then works on it)."""
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")


def pyramid_levels(
    image: Image.Image, sizes: Sequence[tuple[int, int]], direct: int = 3, workers: Workers = INLINE
) -> Iterator[np.ndarray]:
    """Area-resize the image to each pyramid level, largest first; yields ``(lh, lw, 3) uint8``.

    Pillow's box filter averages each output pixel's footprint with exact fractional
    coverage, the area interpolation MTCNN's pyramid wants. The first ``direct`` levels
    come from the image itself, every further level from the level two steps before it: with
    the default step of 0.709 that is a halving, where a box filter is nearly an exact 2x2
    average, so the levels stay close to direct resizes while each costs a fraction of a
    full-image pass.

    With ``workers`` wider than one thread the direct levels, most of the pyramid's cost, are
    all started at once and resized side by side (Pillow releases the GIL), while the caller
    already works on the levels yielded. The levels are the same either way.

    With three direct levels (``direct``, at least 2) it finds every face facenet-pytorch finds
    in the benchmark's scenes, where two lost one, and at least as many FER2013 test faces as
    exact pooling (docs/benchmarks.md; ``tools/bench_photos.py --variant pyramid_direct=...``).
    """
    direct = max(direct, 2)
    started = [workers.start(_box_resize, image, *size) for size in sizes[:direct]] if workers.width > 1 else []
    made: list[Image.Image] = []
    for k, size in enumerate(sizes):
        if k < len(started):
            level = started[k]()
        else:
            level = _box_resize(image if k < direct else made[k - 2], *size)
        made.append(level)
        yield np.asarray(level)


def _box_resize(source: Image.Image, height: int, width: int) -> Image.Image:
    """``source`` box-resized to ``width x height``; ``source`` itself when the level is its size
    or at most one pixel larger. facenet's ``int(h * scale + 1)`` gives a level searched at scale
    1 (a reduced photo, or a 12 px minimum face) one pixel more than the image: resampling to it
    would blur every pixel to add one row and column that hold no face, at the cost of a full
    pass over the image. Without it P-Net's output misses that one edge cell (whose window would
    reach past the image); every other cell is the image's own."""
    extra_w, extra_h = width - source.width, height - source.height
    if extra_w in (0, 1) and extra_h in (0, 1):
        return source
    return source.resize((width, height), Image.Resampling.BOX)


@lru_cache(maxsize=1024)
def pooling_bounds(length: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open input ranges ``[lo[i], hi[i])`` that adaptive average pooling averages for
    each of ``out_size`` outputs from ``length`` pixels (torch's rule; see :func:`pooling_matrix`)."""
    i = np.arange(out_size, dtype=np.int64)
    lo = (i * length) // out_size
    hi = -((-(i + 1) * length) // out_size)  # integer ceil, no float rounding at the edges
    return lo, hi


@lru_cache(maxsize=1024)
def pooling_matrix(length: int, out_size: int) -> np.ndarray:
    """``(out_size, length) float32`` matrix of adaptive average pooling from ``length`` pixels.

    Output cell ``i`` averages input pixels ``[floor(i*L/n), ceil((i+1)*L/n))``: torch's
    ``adaptive_avg_pool`` rule, which facenet-pytorch's ``interpolate(mode="area")`` uses for
    the R-Net and O-Net crops, upsampling and downsampling alike.
    """
    lo, hi = pooling_bounds(length, out_size)
    pixel = np.arange(length, dtype=np.int64)
    inside = (pixel[None, :] >= lo[:, None]) & (pixel[None, :] < hi[:, None])  # (n, L)
    return (inside / (hi - lo)[:, None]).astype(np.float32)


def crop_patches(image: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """Area-resize every window of the image to ``size x size`` (up or down), exactly as
    facenet-pytorch crops candidates for R-Net and O-Net.

    Each crop is two small matrix products over the window only, so the cost follows the
    candidates' area, not the image's. A window many times taller than the crop (a big face's
    candidate) sums its rows cell by cell instead: the product would multiply every pixel by
    every output row, most of them zeros.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        windows: ``(K, 4) int64`` non-empty half-open ``row0, row1, col0, col1``.
    Returns:
        ``(K, size, size, 3) float32`` mean pixels (not yet normalised).
    """
    out = np.empty((len(windows), size, size, 3), dtype=np.float32)
    for k, (r0, r1, c0, c1) in enumerate(windows.tolist()):
        window = image[r0:r1, c0:c1].reshape(r1 - r0, -1)  # (h, w * 3) uint8
        if r1 - r0 > _CELL_SUM_ROWS * size:
            rows = _row_cell_means(window, size)
        else:
            rows = pooling_matrix(r1 - r0, size) @ window.astype(np.float32)  # (size, w * 3)
        out[k] = pooling_matrix(c1 - c0, size) @ rows.reshape(size, c1 - c0, 3)  # (size, size, 3)
    return out


def _row_cell_means(window: np.ndarray, size: int) -> np.ndarray:
    """``pooling_matrix(h, size) @ window`` for an ``(h, n) uint8`` window, one sum per output
    row over its own input rows (integer sums, exact; then one division)."""
    lo, hi = pooling_bounds(len(window), size)
    sums = np.empty((size, window.shape[1]), dtype=np.uint32)
    for i, (start, stop) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        np.add.reduce(window[start:stop], axis=0, dtype=np.uint32, out=sums[i])
    return sums.astype(np.float32) / (hi - lo).astype(np.float32)[:, None]


def normalise_pixels(x: np.ndarray) -> np.ndarray:
    """``(..., H, W, 3)`` pixels -> ``(..., 3, H, W) float32`` network input, facenet's scaling."""
    x = (x.astype(np.float32, copy=False) - np.float32(127.5)) * np.float32(0.0078125)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def pnet_grid_size(height: int, width: int) -> tuple[int, int]:
    """P-Net's output cells over a ``height x width`` input: a valid 3x3 convolution, a
    ceil-mode 2x2 max-pool, then two valid 3x3 convolutions."""
    return -(-(height - 2) // 2) - 4, -(-(width - 2) // 2) - 4


def pnet_bands(height: int, width: int, max_pixels: int) -> list[tuple[int, int, int]]:
    """Horizontal bands that together give P-Net's whole output over a level.

    Each band is ``(row0, row1, cells)``: input rows ``[row0, row1)`` give exactly ``cells``
    output rows, the level's output rows from ``row0 // 2`` on. Output row ``y`` reads input
    rows ``[2y, 2y + 12)``, so a band of ``n`` output rows needs ``2n + 10`` input rows,
    overlapping the next band by 10; the last band runs to the level's edge, where the
    ceil-mode pool sees what it sees on the whole level.
    """
    total, _ = pnet_grid_size(height, width)
    per_band = max(1, (max_pixels // max(width, 1) - 10) // 2)
    if total <= per_band:
        return [(0, height, total)]
    bands = []
    for first in range(0, total, per_band):
        cells = min(per_band, total - first)
        end = height if first + cells == total else 2 * (first + cells - 1) + PNET_CELL
        bands.append((2 * first, end, cells))
    return bands


def generate_boxes(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float, first_row: int = 0) -> np.ndarray:
    """Turn one P-Net output map into candidate boxes in image pixels.

    Args:
        reg: ``(4, gh, gw) float32`` box offsets; prob: ``(gh, gw) float32`` face probability.
        first_row: the level's output row that the map's first row is (a band of the level).
    Returns:
        ``(N, 9) float32``: x1, y1, x2, y2, score, then the 4 raw offsets, in row-major cell order.
    """
    ys, xs = np.nonzero(prob >= threshold)
    cell = np.stack([xs, ys + first_row], axis=1).astype(np.float32)  # (N, 2) as (x, y) in the level
    # float32 arithmetic like facenet's (a float32 tensor divided by a Python scalar), so the
    # floor lands on the same integer at .0 boundaries.
    s = np.float32(scale)
    q1 = np.floor((PNET_STRIDE * cell + 1) / s)
    q2 = np.floor((PNET_STRIDE * cell + PNET_CELL) / s)
    score = prob[ys, xs][:, None]
    offsets = reg[:, ys, xs].T  # (N, 4)
    return np.concatenate([q1, q2, score, offsets], axis=1).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    ``mode="union"`` is torchvision's ``nms`` (areas ``(x2-x1)*(y2-y1)``, drop IoU > threshold),
    which facenet uses for P-Net and R-Net. ``mode="min"`` is facenet's numpy NMS for the final
    stage (areas with ``+1``, overlap divided by the smaller area, drop > threshold).

    Args:
        boxes: ``(N, 4)`` x1, y1, x2, y2; scores: ``(N,)``.
    Returns:
        ``(K,) int64`` indices into ``boxes``.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode {mode!r}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order, :4].astype(np.float64)  # (N, 4), best first
    keep: list[int] = []
    # A box survives unless a box kept before it overlaps it too much. The overlaps come a
    # block of rows at a time, against the boxes from the block on only (a box never suppresses
    # an earlier one), so memory stays small for thousands of candidates and the greedy pass
    # over a block is cheap.
    suppressed = np.zeros(len(order), dtype=bool)
    for start in range(0, len(order), _NMS_BLOCK):
        block = ranked[start : start + _NMS_BLOCK]
        over = _overlap(block[:, None], ranked[None, start:], mode) > threshold  # (B, N - start) bool
        tail = suppressed[start:]  # a view: suppressing in it suppresses in ``suppressed``
        for row in range(len(block)):
            if not tail[row]:
                keep.append(start + row)
                tail |= over[row]
    return order[np.asarray(keep, dtype=np.int64)]


def _overlap(a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    """IoU (``"union"``, no +1) or intersection over the smaller area (``"min"``, +1) of
    ``(..., 4)`` boxes ``a`` and ``b``, broadcast against each other."""
    plus = 1.0 if mode == "min" else 0.0
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + plus)
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + plus)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + plus) * (a[..., 3] - a[..., 1] + plus)
    area_b = (b[..., 2] - b[..., 0] + plus) * (b[..., 3] - b[..., 1] + plus)
    if mode == "min":
        return inter / np.minimum(area_a, area_b)
    return inter / (area_a + area_b - inter)


def regress_boxes(boxes: np.ndarray, offsets: np.ndarray, *, inclusive: bool) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box size).

    facenet measures the box as ``x2 - x1`` after P-Net but ``x2 - x1 + 1`` after R-Net and
    O-Net (``inclusive=True``); we keep both so the boxes match to the pixel.

    Args:
        boxes: ``(N, 4+)`` x1, y1, x2, y2, ...; offsets: ``(N, 4)``.
    Returns:
        ``(N, 4) float32`` regressed boxes.
    """
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    size = np.stack([w, h, w, h], axis=1)  # (N, 4)
    return (boxes[:, :4] + offsets * size).astype(np.float32)


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side); ``(N, 4)`` in and out."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(boxes.dtype)


def crop_windows(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel windows that facenet crops for each box, clipped to the image.

    facenet truncates the box to integers, clips ``x1, y1`` to >= 1 and ``x2, y2`` to the image
    size, and crops rows ``y1 - 1 : y2`` and columns ``x1 - 1 : x2``. Parts of a box outside
    the image are therefore cut off (not zero-padded as in the original MTCNN), and the crop is
    stretched to the network's square input. We keep that, since it decides the scores.

    Args:
        boxes: ``(N, 4)`` x1, y1, x2, y2.
    Returns:
        ``(windows, valid)``: ``(N, 4) int64`` half-open ``row0, row1, col0, col1`` and an
        ``(N,) bool`` mask of non-empty windows (boxes wholly outside the image are not valid).
    """
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    col0 = np.maximum(b[:, 0], 1) - 1
    row0 = np.maximum(b[:, 1], 1) - 1
    col1 = np.minimum(b[:, 2], width)
    row1 = np.minimum(b[:, 3], height)
    valid = (row1 > row0) & (col1 > col0) & (row0 < height) & (col0 < width)
    return np.stack([row0, row1, col0, col1], axis=1), valid


# --- the detector -------------------------------------------------------------------------


def session_threads(threads: int, intra_op_threads: int) -> int:
    """ONNX Runtime threads for each detector session: one when ``threads`` threads share the
    detector's work (they are its parallelism; a pool per session would oversubscribe the
    cores), else ``intra_op_threads`` (0: ONNX Runtime's default, one per core)."""
    return 1 if threads > 1 else intra_op_threads


class MTCNN:
    """The MTCNN cascade over three sessions (``onnxruntime.InferenceSession`` or look-alikes).

    Stateless after construction: it owns no thread and counts nothing, so any number of
    threads may call it at once. Where a call's pieces run is the caller's choice, passed as
    ``workers`` (:class:`Workers`; the service's scheduler, ``service.scheduling``, decides); by
    default everything runs in the calling thread. The detections do not depend on it: the
    network calls are the same, only their order is.

    Args:
        pnet, rnet, onet: sessions of the graphs in ``models/mtcnn`` (inputs ``image``; outputs
            ``reg, prob`` / ``reg, prob`` / ``reg, landmarks, prob`` in that order).
        min_face_size: face side in pixels that the pyramid's first level maps onto P-Net's 12 px
            cell. A soft limit, as in facenet: faces somewhat smaller may still be found, much
            smaller ones are not.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: scale step of the image pyramid.
        tuning: how the work is cut into calls (:class:`CascadeTuning`).
    """

    def __init__(
        self,
        pnet: Session,
        rnet: Session,
        onet: Session,
        *,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        tuning: CascadeTuning = DEFAULT_TUNING,
    ) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"need 3 thresholds (P-Net, R-Net, O-Net), got {thresholds}")
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self._pnet_input = pnet.get_inputs()[0].name
        self._rnet_input = rnet.get_inputs()[0].name
        self._onet_input = onet.get_inputs()[0].name
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        pyramid_scales(PNET_CELL, PNET_CELL, self.min_face_size, self.factor)  # validates both
        self.tuning = tuning

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        sessions: SessionSpec | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        **kwargs: Any,
    ) -> MTCNN:
        """Load ``model_dir/card.json``, verify every graph's sha256 (:func:`detector_files`),
        and create the sessions as ``sessions`` says; without it, on ``providers`` (the CPU by
        default) with ``intra_op_threads`` ONNX Runtime threads each (0: its default). Other
        keywords are the constructor's.

        Raises:
            ModelLoadError: missing/malformed card, wrong kind, missing graph, bad checksum, or
                a file ONNX Runtime cannot load.
        """
        # Imported here so that the module (its constants, the numpy stages) loads without ONNX Runtime.
        from service.runtime import CPU, SessionSpec

        # No CPU arena (the spec's default): every photo gives P-Net inputs of new sizes, and an
        # arena keeps the largest ever seen (docs/deploy.md, "Memory").
        spec = sessions or SessionSpec(providers=tuple(providers or (CPU,)), intra_op_threads=intra_op_threads)
        return cls.from_verified(detector_files(load_card(model_dir), model_dir), spec, **kwargs)

    @classmethod
    def from_verified(cls, paths: dict[str, Path], sessions: SessionSpec, **kwargs: Any) -> MTCNN:
        """The cascade over graph files already verified (:func:`detector_files`' answer)."""
        return cls(*(sessions.create(paths[g]) for g in GRAPH_NAMES), **kwargs)

    def detect(
        self,
        image: np.ndarray,
        *,
        min_face_size: int | None = None,
        threshold: float | None = None,
        workers: Workers = INLINE,
    ) -> list[FaceDetection]:
        """Find faces in an ``(H, W, 3) uint8`` RGB image.

        Args:
            min_face_size: overrides the constructor's for this call.
            threshold: overrides the final (O-Net) score threshold for this call.
            workers: where the call's pieces run.
        Returns:
            Detections sorted by score, highest first (possibly empty).
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise InvalidImage(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        min_face = self.min_face_size if min_face_size is None else int(min_face_size)
        final_threshold = self.thresholds[2] if threshold is None else float(threshold)
        boxes, scores, points = self._cascade(image, min_face, final_threshold, workers)
        return [
            FaceDetection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                landmarks=p.astype(np.float64),
            )
            for b, s, p in zip(boxes, scores, points, strict=True)
        ]

    def _cascade(
        self, image: np.ndarray, min_face: int, threshold: float, workers: Workers
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three stages on one image: boxes, scores and landmarks, best first."""
        height, width = image.shape[:2]
        boxes = self._stage_pnet(as_pil(image), height, width, min_face, workers)  # (N, 4) float32 squares
        if len(boxes):
            boxes = self._stage_rnet(image, boxes, height, width, workers)
        if not len(boxes):
            return boxes, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        return self._stage_onet(image, boxes, height, width, threshold, workers)

    def refine(self, image: np.ndarray, box: Sequence[float], *, workers: Workers = INLINE) -> FaceDetection | None:
        """Run O-Net alone on one box of ``image``: the final stage of the cascade at this
        image's resolution, for a face found on a reduced copy of it.

        Returns:
            The refined detection, or None when O-Net does not keep it at its own threshold.
        """
        height, width = image.shape[:2]
        square = square_boxes(np.asarray([box], dtype=np.float32))
        boxes, scores, points = self._stage_onet(image, square, height, width, self.thresholds[2], workers)
        if not len(boxes):
            return None
        b = boxes[0]
        return FaceDetection(
            box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            score=float(scores[0]),
            landmarks=points[0].astype(np.float64),
        )

    # The three stages; each takes and returns float32 boxes in image pixels.

    def _stage_pnet(self, picture: Image.Image, height: int, width: int, min_face: int, workers: Workers) -> np.ndarray:
        # One P-Net call per band of each level (the bands of a level give its whole output,
        # and let the threads share the big levels), each started as soon as its level is
        # resized. Packing the levels onto one canvas was measured slower: P-Net is
        # compute-bound at every level, so the canvas's padding costs more than the calls it saves.
        scales = pyramid_scales(height, width, min_face, self.factor)
        sizes = [level_size(height, width, scale) for scale in scales]

        def candidates(level: np.ndarray, k: int, band: tuple[int, int, int]) -> np.ndarray:
            row0, row1, cells = band
            reg, prob = self._pnet_band(level, row0, row1, cells)
            return generate_boxes(reg, prob, scales[k], self.thresholds[0], first_row=row0 // 2)  # (n, 9)

        levels = pyramid_levels(picture, sizes, self.tuning.pyramid_direct, workers)
        started = [
            [
                workers.start(candidates, level, k, band)
                for band in pnet_bands(level.shape[0], level.shape[1], self.tuning.pnet_band_pixels)
            ]
            for k, level in enumerate(levels)
        ]
        per_level: list[np.ndarray] = []
        for bands in started:
            cand = np.concatenate([result() for result in bands], axis=0)
            per_level.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        cand = np.concatenate(per_level, axis=0) if per_level else np.zeros((0, 9), np.float32)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        return square_boxes(regress_boxes(cand[:, :4], cand[:, 5:9], inclusive=False))

    def _pnet_band(self, level: np.ndarray, row0: int, row1: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        """P-Net over rows ``[row0, row1)`` of a ``(H, W, 3) uint8`` level (a band of
        :func:`pnet_bands`): the offsets ``(4, cells, gw)`` and face probability ``(cells, gw)``."""
        reg, prob = self.pnet.run(None, {self._pnet_input: normalise_pixels(level[row0:row1])[None]})[:2]
        return reg[0, :, :cells], prob[0, 1, :cells]

    def _classify(
        self,
        session: Session,
        input_name: str,
        image: np.ndarray,
        windows: np.ndarray,
        size: int,
        n_outputs: int,
        workers: Workers,
    ) -> list[np.ndarray]:
        """Crop the windows to ``size`` px and run R-Net or O-Net on them, at most
        ``tuning.crop_batch`` crops of R-Net's size (their pixels in bigger crops) a call, in calls
        of equal size, as many for each of the workers' threads (no thread is left with a short
        last call while the others wait). Returns the graph's first ``n_outputs`` outputs. Each
        crop's outputs do not depend on the call it is in (ONNX Runtime's CPU kernels are
        batch-invariant: ``tests/test_mtcnn.py``)."""
        per_call = max(1, self.tuning.crop_batch * RNET_SIZE**2 // size**2)
        calls = -(-len(windows) // per_call)
        calls = -(-calls // workers.width) * workers.width
        step = -(-len(windows) // calls)
        chunks = [windows[i : i + step] for i in range(0, len(windows), step)]

        def run(chunk: np.ndarray) -> list[np.ndarray]:
            crops = normalise_pixels(crop_patches(image, chunk, size))  # (k, 3, size, size)
            return session.run(None, {input_name: crops})[:n_outputs]

        parts = [result() for result in [workers.start(run, chunk) for chunk in chunks]]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[k] for p in parts], axis=0) for k in range(n_outputs)]

    def _stage_rnet(
        self, image: np.ndarray, boxes: np.ndarray, height: int, width: int, workers: Workers
    ) -> np.ndarray:
        windows, valid = crop_windows(boxes, height, width)
        boxes, windows = boxes[valid], windows[valid]
        if not len(boxes):
            return boxes
        reg, prob = self._classify(self.rnet, self._rnet_input, image, windows, RNET_SIZE, 2, workers)
        score = prob[:, 1]
        passed = score > self.thresholds[1]
        boxes, score, reg = boxes[passed], score[passed], reg[passed]
        keep = nms(boxes, score, 0.7)
        return square_boxes(regress_boxes(boxes[keep], reg[keep], inclusive=True))

    def _stage_onet(
        self, image: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float, workers: Workers
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns ``(M, 4)`` boxes, ``(M,)`` scores and ``(M, 5, 2)`` landmarks, best first."""
        windows, valid = crop_windows(boxes, height, width)
        boxes, windows = boxes[valid], windows[valid]
        if not len(boxes):
            return boxes, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        reg, marks, prob = self._classify(self.onet, self._onet_input, image, windows, ONET_SIZE, 3, workers)
        score = prob[:, 1]
        passed = score > threshold
        boxes, score, reg, marks = boxes[passed], score[passed], reg[passed], marks[passed]
        # Landmarks are fractions of the (inclusive) square box, measured from x1 - 1, y1 - 1.
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = w * marks[:, :5] + boxes[:, 0:1] - 1  # (M, 5)
        py = h * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=2)  # (M, 5, 2)
        boxes = regress_boxes(boxes, reg, inclusive=True)
        keep = nms(boxes, score, 0.7, mode="min")
        return boxes[keep], score[keep], points[keep]


def detector_files(card: ModelCard, model_dir: str | Path) -> dict[str, Path]:
    """The verified graph files of a detector card: the card's
    kind and graphs checked, every file's sha256 compared.

    Raises:
        ModelLoadError: wrong kind, a graph missing, or a file missing or altered.
    """
    if card.kind != "detector":
        raise ModelLoadError(f"{model_dir} holds a {card.kind!r} model, not a face detector")
    missing = [g for g in GRAPH_NAMES if g not in card.graphs]
    if missing:
        raise ModelLoadError(f"detector card {card.name!r} lacks graphs {missing}")
    return verify_files(card, model_dir)


__all__ = [
    "INLINE",
    "CascadeTuning",
    "FaceDetection",
    "Inline",
    "MTCNN",
    "crop_windows",
    "generate_boxes",
    "level_size",
    "nms",
    "pyramid_scales",
    "regress_boxes",
    "session_threads",
    "square_boxes",
    "Workers",
]
