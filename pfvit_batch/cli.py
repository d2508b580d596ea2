"""``pfvit-batch``: emotions of every face in folders of photos and videos, on a Ray cluster.

    pfvit-batch photos/ clips/ --output faces.parquet --poker-face out/poker
    pfvit-batch 'frames/*.jpg' --address auto --gpus-per-actor 0.5 --output faces.jsonl

Inputs are read as ``pfvit-recognize`` reads them (folders walked for photos and videos, video
frames sampled by ``--every``/``--fps``). Rows, one per face, hold what ``/v1/recognize``
answers; an image without a face gives one row with no face, and a file that cannot be
analysed gives one row with its ``error``. Exit status: 0 when every input was analysed, 1 when
some were not, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pfvit_batch.plan import READ_CPUS, ActorPlan, plan_actors
from pfvit_client.inputs import Source, add_sampling_arguments, check_sampling, expected_count, sampling, walk
from pfvit_client.video import is_video

if TYPE_CHECKING:
    import pyarrow as pa

    from service.config import Settings
    from service.pipeline import DetectOptions

FORMATS = ("jsonl", "parquet")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pfvit-batch",
        description=(
            "Emotions of every face in photos, folders and videos, with the service's models running in Ray actors."
        ),
        epilog="Exit status: 0 every input analysed, 1 some could not be, 2 usage error. "
        "Models and detection defaults come from the PFVIT_* settings, as for the service.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH_DIR_OR_GLOB",
        help="image or video files, folders to walk for them, or glob patterns",
    )
    p.add_argument(
        "--output", "-o", default="-", metavar="FILE", help="rows go to FILE ('-': JSON lines on stdout; the default)"
    )
    p.add_argument("--format", choices=FORMATS, help="jsonl or parquet (default: from the output's suffix, else jsonl)")
    p.add_argument("--poker-face", type=Path, metavar="DIR", help="save each face's poker face as PNG into DIR")
    p.add_argument("--expression-map", type=Path, metavar="DIR", help="save each face's expression map as PNG into DIR")
    p.add_argument(
        "--max-faces", type=int, metavar="N", help="faces per image at most (PFVIT_DEFAULT_MAX_FACES otherwise)"
    )
    p.add_argument("--min-face-size", type=int, metavar="PX", help="smallest face side in pixels")
    p.add_argument("--threshold", type=float, metavar="P", help="final detection probability threshold")
    add_sampling_arguments(p)
    ray = p.add_argument_group("Ray")
    ray.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster to run on ('auto': the one this machine belongs to); "
        "without it a local Ray instance is started and stopped",
    )
    ray.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs of the local instance (default: all this process may use)"
    )
    ray.add_argument(
        "--actors", type=int, metavar="N", help="recognition actors (default: from the cluster's CPUs or GPUs)"
    )
    ray.add_argument(
        "--threads-per-actor",
        type=int,
        default=1,
        metavar="N",
        help="detector and ONNX Runtime threads of each actor (default 1)",
    )
    ray.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        metavar="G",
        help="run the actors on CUDA, each reserving G GPUs (e.g. 0.5: two per GPU); default 0: on the CPU",
    )
    ray.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="photos or frames per actor call (default 16)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    p.add_argument("--stats-json", type=Path, metavar="FILE", help="write counts and timings (seconds) as JSON to FILE")
    args = p.parse_args(argv)
    check_sampling(p, args)
    for name in ("actors", "num_cpus"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads_per_actor < 1 or args.batch_size < 1:
        p.error("--threads-per-actor and --batch-size must be at least 1")
    if args.gpus_per_actor < 0:
        p.error("--gpus-per-actor cannot be negative")
    if args.format is None:
        args.format = "parquet" if args.output.lower().endswith(".parquet") else "jsonl"
    if args.format == "parquet" and args.output == "-":
        p.error("Parquet needs a file: give --output FILE")
    return args


def find_inputs(paths: list[str]) -> tuple[list[Source], list[tuple[str, str]]]:
    """``pfvit-recognize``'s inputs (``pfvit_client.inputs.walk``), plus glob patterns expanded
    here for shells that do not (or for patterns quoted to spare a long command line)."""
    expanded: list[str] = []
    unmatched: list[tuple[str, str]] = []
    for arg in paths:
        if glob.has_magic(arg) and not Path(arg).exists():
            matches = sorted(glob.glob(arg, recursive=True))
            expanded += matches
            if not matches:
                unmatched.append((arg, "no file matches the pattern"))
        else:
            expanded.append(arg)
    sources, missing = walk(expanded)
    return sources, unmatched + missing


# --- output ----------------------------------------------------------------------------------


def parquet_schema(labels: list[str]) -> pa.Schema:
    """One column per row field; ``box`` and ``probabilities`` as structs (a field per label)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("source", pa.string()),
            ("frame", pa.int64()),
            ("time_s", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("face", pa.int64()),
            ("box", pa.struct([(k, pa.float64()) for k in ("x1", "y1", "x2", "y2")])),
            ("score", pa.float64()),
            ("landmarks", pa.list_(pa.list_(pa.float64()))),
            ("label", pa.string()),
            ("probabilities", pa.struct([(label, pa.float64()) for label in labels])),
            ("logits", pa.list_(pa.float64())),
            ("error", pa.string()),
            ("poker_face_file", pa.string()),
            ("expression_map_file", pa.string()),
        ]
    )


class RowSink:
    """JSON lines (a file or stdout) or one Parquet file, written in chunks as rows arrive."""

    CHUNK_ROWS = 4096

    def __init__(self, target: str, kind: str, labels: list[str]) -> None:
        self.kind = kind
        self._rows: list[dict[str, Any]] = []
        self._stream: IO[str] | None = None
        self._parquet = None
        if kind == "jsonl":
            self._stream = sys.stdout if target == "-" else open(target, "w", encoding="utf-8")
        else:
            import pyarrow.parquet as pq

            self._schema = parquet_schema(labels)
            self._parquet = pq.ParquetWriter(target, self._schema)

    def write(self, row: dict[str, Any]) -> None:
        if self._stream is not None:
            self._stream.write(json.dumps(row) + "\n")
            return
        self._rows.append(row)
        if len(self._rows) >= self.CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows and self._parquet is not None:
            self._parquet.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
        self._rows = []

    def close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            if self._stream is not sys.stdout:
                self._stream.close()
        if self._parquet is not None:
            self._flush()
            self._parquet.close()


@dataclass
class Tally:
    images: int = 0
    frames: int = 0
    faces: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def count(self, row: dict[str, Any], first: bool) -> None:
        where = row["source"] if row["frame"] is None else f"{row['source']} frame {row['frame']}"
        if row["error"]:
            self.failures.append((where, row["error"]))
            return
        if first:
            if row["frame"] is None:
                self.images += 1
            else:
                self.frames += 1
        self.faces += row["face"] is not None

    @property
    def summary(self) -> str:
        return f"{self.images} image(s) and {self.frames} video frame(s) analysed, {self.faces} face(s)"


def error_row(source: str, error: str) -> dict[str, Any]:
    from pfvit_batch.work import ROW_FIELDS

    return {
        **dict.fromkeys(ROW_FIELDS),
        "source": source,
        "error": error,
        "poker_face_file": None,
        "expression_map_file": None,
    }


# --- the job ---------------------------------------------------------------------------------


def job_settings(settings: Settings, plan: ActorPlan) -> Settings:
    """The service's ``settings`` (``PFVIT_*``, as read here) with the actors' providers and threads.

    One computing slot and no micro-batching wait: an actor runs one batch at a time.
    """
    return settings.model_copy(
        update={
            "providers": plan.providers,
            "detect_threads": plan.threads,
            "intra_op_threads": plan.threads,
            "max_concurrent_inference": 1,
            "batch_max_wait_ms": 0.0,
        }  # fmt: skip
    )


def start_ray(args: argparse.Namespace) -> Any:
    """Connect to ``--address``, or start a local instance. Ray's usage reporting stays off: a
    batch job never calls out of the machine it was started on."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its execution plans; our bar shows progress
    if args.address:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=True)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    return ray


def detect_options(settings: Settings, args: argparse.Namespace) -> DetectOptions:
    """``--max-faces``, ``--min-face-size`` and ``--threshold`` checked and completed as the
    query options of ``/v1/recognize`` are.

    Raises:
        ValueError: an option outside what the service accepts.
    """
    from pydantic import ValidationError

    from service.api.options import GivenOptions, resolve_options
    from service.api.schemas import JsonDetectOptions
    from service.errors import PFViTError

    try:
        # Checked against the bounds of the JSON body's schema, as the service checks them.
        given = JsonDetectOptions(max_faces=args.max_faces, min_face_size=args.min_face_size, threshold=args.threshold)
        return resolve_options(settings, GivenOptions.from_body(given)).detect
    except ValidationError as exc:
        raise ValueError(
            "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        ) from None
    except PFViTError as exc:
        raise ValueError(exc.detail) from None


def run_job(
    args: argparse.Namespace,
    sources: list[Source],
    settings: Settings,
    options: DetectOptions,
    emit: Callable[[dict[str, Any], int | None, bool, bytes, bytes], None],
    stats: dict[str, float],
) -> None:
    """Every source through the actors; ``emit(row, seq, first, poker_png, map_png)`` per output row, in input order."""
    from functools import partial

    from pfvit_batch.work import Recognizer, Wanted, read_items

    start = time.perf_counter()
    ray = start_ray(args)
    try:
        stats["ray_start_s"] = time.perf_counter() - start
        resources = ray.cluster_resources()
        plan = plan_actors(
            resources.get("CPU", 0.0),
            resources.get("GPU", 0.0),
            actors=args.actors,
            threads=args.threads_per_actor,
            gpus_per_actor=args.gpus_per_actor,
        )
        settings = job_settings(settings, plan)
        wanted = Wanted(poker_face=args.poker_face is not None, expression_map=args.expression_map is not None)

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in input order
        context.enable_progress_bars = False  # ours counts photos and frames
        items = [{"seq": i, "source": str(s.path), "video": is_video(s.path)} for i, s in enumerate(sources)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
        ds = ds.flat_map(partial(read_items, **sampling(args)), num_cpus=READ_CPUS)
        ds = ds.map_batches(
            Recognizer,
            fn_constructor_kwargs={"settings": settings, "options": options, "wanted": wanted},
            batch_format="pyarrow",
            batch_size=args.batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus or None,
        )
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for out in batch.to_pylist():
                stats.setdefault("first_row_s", time.perf_counter() - start)
                emit(json.loads(out["row"]), out["seq"], out["first"], out["poker_face_png"], out["expression_map_png"])
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from service.card import POKER_FACE_GRAPH, load_card
    from service.config import Settings
    from service.errors import PFViTError

    settings = Settings()
    try:
        card = load_card(settings.emotion_model_dir)
        options = detect_options(settings, args)
    except PFViTError as exc:
        print(f"pfvit-batch: {exc.detail}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"pfvit-batch: {exc}", file=sys.stderr)
        return 2
    if (args.poker_face or args.expression_map) and POKER_FACE_GRAPH not in card.graphs:
        print(
            f"pfvit-batch: model {card.name!r} ships no poker-face graph; run without --poker-face and "
            "--expression-map",
            file=sys.stderr,
        )
        return 2
    sources, missing = find_inputs(args.paths)
    for folder in (args.poker_face, args.expression_map):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in sources]
    sink = RowSink(args.output, args.format, list(card.labels))
    tally = Tally()
    from tqdm import tqdm

    bar = tqdm(
        total=expected_count(sources, args),
        unit="img",
        disable=None if args.progress is None else not args.progress,
        file=sys.stderr,
    )

    def emit(row: dict[str, Any], seq: int | None, first: bool, poker: bytes, emap: bytes) -> None:
        stem = None
        if seq is not None:
            stem = names[seq] if row["frame"] is None else f"{names[seq]}.frame{row['frame']:06d}"
        row["poker_face_file"] = save(args.poker_face, stem, row["face"], "poker", poker)
        row["expression_map_file"] = save(args.expression_map, stem, row["face"], "map", emap)
        sink.write(row)
        tally.count(row, first)
        if first:
            bar.update(1)

    stats: dict[str, float] = {}
    code = 0
    try:
        for path, why in missing:
            emit(error_row(path, why), None, True, b"", b"")
        if sources:
            run_job(args, sources, settings, options, emit, stats)
    except KeyboardInterrupt:
        code = 130
    finally:
        bar.close()
        sink.close()
    stats.update(
        wall_s=time.perf_counter() - start,
        images=tally.images,
        frames=tally.frames,
        faces=tally.faces,
        errors=len(tally.failures),
    )
    if args.stats_json is not None:
        args.stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    if tally.failures:
        print(f"{tally.summary}; {len(tally.failures)} input(s) could not be analysed:", file=sys.stderr)
        for source, why in tally.failures:
            print(f"  {source}: {why}", file=sys.stderr)
        return code or 1
    print(tally.summary, file=sys.stderr)
    return code


def save(folder: Path | None, stem: str | None, face: int | None, kind: str, png: bytes) -> str | None:
    """Write a face's picture as ``<stem>.face<k>.<kind>.png`` (``pfvit-recognize``'s names); its path."""
    if folder is None or stem is None or face is None or not png:
        return None
    path = folder / f"{stem}.face{face}.{kind}.png"
    path.write_bytes(png)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
