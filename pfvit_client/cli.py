"""``pfvit-recognize``: emotions of every face in photos, folders and videos, through the service.

    pfvit-recognize photos/ --url http://127.0.0.1:8000 --csv faces.csv --poker-face out/poker
    pfvit-recognize clip.mp4 --fps 2 --jsonl clip.jsonl --annotate out/

One row per face (per sampled frame for videos); an image without a face gives one row with
no face. Files the service refuses are reported at the end and the others are analysed
regardless. Exit status: 0 when every input was analysed, 1 when some were not, 2 for usage
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from pfvit_client.client import DEFAULT_URL, AsyncPFViTClient, ServiceError, encode_array
from pfvit_client.inputs import Source, add_sampling_arguments, check_sampling, expected_count, sampling, walk
from pfvit_client.types import ImageResult
from pfvit_client.video import is_video, sample_frames, write_annotated

BASE_COLUMNS = ["source", "frame", "time_s", "face", "label", "score", "x1", "y1", "x2", "y2"]


class RowWriter:
    """JSON lines or CSV, one row per face; CSV columns are fixed by the first answer's labels."""

    def __init__(self, stream: IO[str], kind: str) -> None:
        self.stream = stream
        self.kind = kind
        self.labels: list[str] | None = None
        self._csv: csv.DictWriter[str] | None = None

    def write(self, result: ImageResult, source: str, frame: int | None = None, time_s: float | None = None) -> None:
        base = {"source": source, "frame": frame, "time_s": None if time_s is None else round(time_s, 4)}
        rows: list[dict[str, Any]] = []
        for k, face in enumerate(result.faces):
            b = face.box
            rows.append(
                {
                    **base,
                    "face": k,
                    "label": face.label,
                    "score": face.score,
                    "x1": b.x1,
                    "y1": b.y1,
                    "x2": b.x2,
                    "y2": b.y2,
                    "probabilities": face.probabilities,
                }
            )
        if not rows:
            rows.append(
                {
                    **base,
                    "face": None,
                    "label": None,
                    "score": None,
                    "x1": None,
                    "y1": None,
                    "x2": None,
                    "y2": None,
                    "probabilities": {},
                }
            )
        for row in rows:
            if self.kind == "jsonl":
                self.stream.write(json.dumps(row) + "\n")
                continue
            if self._csv is None:
                self.labels = list(result.labels)
                self._csv = csv.DictWriter(self.stream, fieldnames=BASE_COLUMNS + self.labels, extrasaction="ignore")
                self._csv.writeheader()
            probs = row.pop("probabilities")
            self._csv.writerow(
                {
                    **{k: "" if v is None else v for k, v in row.items()},
                    **{label: probs.get(label, "") for label in self.labels or []},
                }
            )
        self.stream.flush()


@dataclass
class Run:
    args: argparse.Namespace
    writer: RowWriter
    advance: Any
    failures: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    frames: int = 0
    faces: int = 0

    def save_pictures(self, result: ImageResult, stem: str) -> None:
        for k, face in enumerate(result.faces):
            for folder, data, kind in (
                (self.args.poker_face, face.poker_face_png, "poker"),
                (self.args.expression_map, face.expression_map_png, "map"),
            ):
                if folder is not None and data is not None:
                    (folder / f"{stem}.face{k}.{kind}.png").write_bytes(data)

    def take(
        self, result: ImageResult, source: str, stem: str, frame: int | None = None, time_s: float | None = None
    ) -> None:
        self.advance(1)
        if not result.ok:
            self.failures.append((source if frame is None else f"{source} frame {frame}", str(result.error)))
            return
        self.writer.write(result, source, frame, time_s)
        self.save_pictures(result, stem)
        self.faces += len(result.faces)
        if frame is None:
            self.images += 1
        else:
            self.frames += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pfvit-recognize",
        description="Emotions of every face in photos, folders of photos and videos, read by a PF-ViT service.",
        epilog="Exit status: 0 every input analysed, 1 some could not be, 2 usage error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH_OR_DIR", help="image or video files, or folders to walk for them")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--jsonl", metavar="FILE", help="write one JSON object per face to FILE ('-': stdout; the default)"
    )
    out.add_argument(
        "--csv", metavar="FILE", help="write one CSV row per face to FILE ('-': stdout), a column per label"
    )
    p.add_argument("--poker-face", type=Path, metavar="DIR", help="save each face's poker face as PNG into DIR")
    p.add_argument("--expression-map", type=Path, metavar="DIR", help="save each face's expression map as PNG into DIR")
    p.add_argument("--concurrency", type=int, default=2, metavar="N", help="requests in flight at once (default 2)")
    p.add_argument(
        "--max-faces", type=int, metavar="N", help="faces per image at most (the service's default otherwise)"
    )
    p.add_argument("--min-face-size", type=int, metavar="PX", help="smallest face side in pixels")
    add_sampling_arguments(p)
    p.add_argument(
        "--annotate", type=Path, metavar="DIR", help="videos: write a copy with boxes and labels drawn into DIR"
    )
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default 120)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    check_sampling(p, args)
    return args


def open_output(target: str | None) -> IO[str]:
    if target in (None, "-"):
        return sys.stdout
    return open(target, "w", newline="", encoding="utf-8")


async def in_input_order(results: AsyncIterator[ImageResult]) -> AsyncIterator[ImageResult]:
    """Chunks finish in any order; rows are written in the order of the inputs."""
    waiting: dict[int, ImageResult] = {}
    next_index = 0
    async for result in results:
        waiting[result.index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    for index in sorted(waiting):
        yield waiting[index]


async def run_images(client: AsyncPFViTClient, run: Run, sources: list[Source], options: dict[str, Any]) -> None:
    async for result in in_input_order(client.iter_recognize([s.path for s in sources], **options)):
        source = sources[result.index]
        run.take(result, str(source.path), source.name)


async def run_video(client: AsyncPFViTClient, run: Run, source: Source, options: dict[str, Any]) -> None:
    args = run.args
    times: dict[int, tuple[int, float]] = {}  # input position -> (frame index, time)

    def frames() -> Iterator[bytes]:
        for position, frame in enumerate(sample_frames(source.path, **sampling(args))):
            times[position] = (frame.index, frame.time_s)
            yield encode_array(frame.image, "JPEG")

    per_frame: dict[int, ImageResult] = {}
    async for result in in_input_order(client.iter_recognize(frames(), **options)):
        index, time_s = times.pop(result.index)
        run.take(result, str(source.path), f"{source.name}.frame{index:06d}", frame=index, time_s=time_s)
        if result.ok and args.annotate is not None:
            # Only boxes and labels are drawn: keep no pictures for the whole video.
            faces = tuple(
                dataclasses.replace(f, poker_face_png=None, expression_map_png=None, aligned_face_png=None)
                for f in result.faces
            )
            per_frame[index] = dataclasses.replace(result, faces=faces)
    if args.annotate is not None:
        write_annotated(source.path, args.annotate / f"{source.name}.annotated.mp4", per_frame)


async def run_all(args: argparse.Namespace, sources: list[Source], run: Run) -> None:
    import av

    options = {
        "max_faces": args.max_faces,
        "min_face_size": args.min_face_size,
        "poker_face": args.poker_face is not None,
        "expression_map": args.expression_map is not None,
    }
    images = [s for s in sources if not is_video(s.path)]
    videos = [s for s in sources if is_video(s.path)]
    async with AsyncPFViTClient(args.url, concurrency=args.concurrency, timeout_s=args.timeout) as client:
        if images:
            await run_images(client, run, images, options)
        for video in videos:
            try:
                await run_video(client, run, video, options)
            except (av.error.FFmpegError, ValueError) as exc:  # a broken video is reported like a bad photo
                run.failures.append((str(video.path), f"cannot decode the video: {exc}"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources, missing = walk(args.paths)
    for folder in (args.poker_face, args.expression_map, args.annotate):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    total = expected_count(sources, args)
    stream = open_output(args.csv if args.csv is not None else args.jsonl)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=None if args.progress is None else not args.progress, file=sys.stderr)
    run = Run(
        args=args,
        writer=RowWriter(stream, "csv" if args.csv is not None else "jsonl"),
        advance=bar.update,
        failures=list(missing),
    )
    code = 0
    try:
        asyncio.run(run_all(args, sources, run))
    except ServiceError as exc:
        print(f"pfvit-recognize: {exc}", file=sys.stderr)
        code = 1
    except httpx.TransportError as exc:
        print(f"pfvit-recognize: cannot reach the service at {args.url}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        bar.close()
        if stream is not sys.stdout:
            stream.close()
    summary = f"{run.images} image(s) and {run.frames} video frame(s) analysed, {run.faces} face(s)"
    if run.failures:
        print(f"{summary}; {len(run.failures)} input(s) could not be analysed:", file=sys.stderr)
        for source, why in run.failures:
            print(f"  {source}: {why}", file=sys.stderr)
        return code or 1
    print(summary, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
