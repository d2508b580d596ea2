"""What the command lines read: photos and videos named or found in folders, and how video
frames are sampled (``--every`` / ``--fps``).

Shared by ``pfvit-recognize`` and ``pfvit-batch`` so that both read the same inputs and sample
the same frames. Pure: paths and arguments only, no network.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from pfvit_client.video import estimated_samples, is_video

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class Source:
    path: Path
    name: str  # file-name-safe id: the path below the folder it was found in, "/" -> "__"


def walk(paths: list[str]) -> tuple[list[Source], list[tuple[str, str]]]:
    """Named files as they are, folders walked for images and videos (sorted); plus missing paths."""
    found: list[Source] = []
    missing: list[tuple[str, str]] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() in IMAGE_SUFFIXES or is_video(child):
                    rel = child.relative_to(path).with_suffix("")
                    found.append(
                        Source(child, f"{path.name}__{'__'.join(rel.parts)}" if path.name else "__".join(rel.parts))
                    )
        elif path.exists():
            found.append(Source(path, path.stem))
        else:
            missing.append((arg, "no such file or folder"))
    return found, missing


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--every N`` or ``--fps F`` (one of them; about one frame a second when neither is given)."""
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=int, metavar="N", help="videos: analyse every N-th frame")
    sampling.add_argument(
        "--fps", type=float, metavar="F", help="videos: analyse about F frames per second (default 1)"
    )


def check_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible sampling values; fill in the default of one frame a second."""
    if args.every is not None and args.every < 1:
        parser.error("--every must be at least 1")
    if args.fps is not None and args.fps <= 0:
        parser.error("--fps must be positive")
    if args.every is None and args.fps is None:
        args.fps = 1.0


class Sampling(TypedDict):
    """``sample_frames``' keyword arguments."""

    every: int | None
    fps: float | None


def sampling(args: argparse.Namespace) -> Sampling:
    """``sample_frames``' keyword arguments for the checked ``args``."""
    return {"every": args.every, "fps": None if args.every else args.fps}


def expected_count(sources: list[Source], args: argparse.Namespace) -> int | None:
    """Photos plus the frames the videos' headers promise; None when a video does not say."""
    total: int | None = sum(1 for s in sources if not is_video(s.path))
    for s in sources:
        if is_video(s.path):
            n = estimated_samples(s.path, **sampling(args))
            total = None if n is None or total is None else total + n
    return total
