"""Builders for the odd and broken uploads the tests send."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(image: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A few-KB PNG whose header declares ``width`` x ``height`` 1-bit pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 64, 9)  # only 64 rows: the rest is never read
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def with_exif_orientation(upright: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG storing ``upright`` rotated so that EXIF ``orientation`` 6 (or 8) puts it back."""
    pil = Image.fromarray(upright)
    stored = pil.rotate(90, expand=True) if orientation == 6 else pil.rotate(-90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def write_rendered_video(path: Path, n_frames: int = 12, fps: int = 4) -> list[tuple[float, float]]:
    """A short clip of a rendered face changing expression; returns each frame's face centre."""
    from fractions import Fraction

    import av

    from training.render.dataset import IDENTITY_RANGES, sample_parameters
    from training.render.face import Scene, prototype_aus, render_scene

    _, identity, _, _, _ = sample_parameters((20261124, 3), IDENTITY_RANGES["test"])
    emotions = ["happiness", "surprise", "sadness", "anger"]
    centres = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.bit_rate = 2_000_000
        for i in range(n_frames):
            centre = (150.0 + 2 * i, 120.0)
            render = render_scene(
                identity,
                prototype_aus(emotions[(i // 3) % len(emotions)]),
                Scene(),
                canvas=(320, 240),
                face_px=110,
                centre=centre,
            )
            centres.append(tuple(render.landmarks.mean(axis=0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(render.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return centres
