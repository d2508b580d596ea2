"""Hostile image files and a seeded mutation corpus: what a client can send the decode path.

Shared by the tests (``tests/test_hostile_images.py``) and ``tools/probe_hostile.py``. Every
builder is deterministic: the same call gives the same bytes.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _picture(size: int = 64, seed: int = 0) -> Image.Image:
    """A small picture with edges and gradients, so that every encoder has work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 255 // size, y * 255 // size, (x ^ y) & 0xFF], axis=-1).astype(np.uint8)
    rgb[size // 4 : size // 2, size // 4 : size // 2] = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return Image.fromarray(rgb, "RGB")


# --- named hostile files -----------------------------------------------------------------------


def dds_minimal() -> bytes:
    """The smallest DDS header Pillow's opener trips over (NotImplementedError in Pillow)."""
    return (
        b"DDS " + struct.pack("<7I", 124, 0x1007, 64, 64, 0, 0, 0) + bytes(44) + struct.pack("<2I", 32, 0) + bytes(60)
    )


def jpeg_half_with_end_marker(image: Image.Image) -> bytes:
    """A baseline JPEG cut at half its length, with an end-of-image marker appended."""
    data = encode(image, "JPEG", quality=90)
    return data[: len(data) // 2] + b"\xff\xd9"


def png_short_image_data(image: Image.Image) -> bytes:
    """A PNG whose image data is a valid zlib stream holding only the first half of the rows."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    raw = np.asarray(rgb).reshape(height, width * 3)
    rows = b"".join(b"\x00" + row.tobytes() for row in raw[: height // 2])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def png_corrupt_image_data(image: Image.Image) -> bytes:
    """A PNG whose image data was overwritten with zeros after its zlib header, its
    chunk checksum left as it was."""
    data = bytearray(encode(image, "PNG"))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + 2 : at + 4 + length] = bytes(length - 2)
    return bytes(data)


def jpeg_comment_flood(markers: int = 5_000_000) -> bytes:
    """A JPEG header followed by ``markers`` empty COM segments (4 bytes each)."""
    head = encode(_picture(16), "JPEG", quality=80)
    return head[:2] + b"\xff\xfe\x00\x02" * markers + head[2:]


def png_chunk_flood(chunks: int = 950_000) -> bytes:
    """A PNG with ``chunks`` tiny ancillary chunks (12 bytes each) before its image data."""
    data = encode(_picture(16), "PNG")
    at = data.find(b"IDAT") - 4
    tiny = _png_chunk(b"tEXt", b"")
    return data[:at] + tiny * chunks + data[at:]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def named_files(image: Image.Image) -> dict[str, tuple[bytes, int]]:
    """Small hostile files and the status each must get (the flood files are separate:
    they are large)."""
    jpeg = encode(image, "JPEG", quality=90)
    return {
        "dds": (dds_minimal(), 415),
        "gif": (encode(image, "GIF"), 415),
        "tiff": (encode(image, "TIFF"), 415),
        "ico": (encode(image.resize((32, 32)), "ICO"), 415),
        "garbage": (b"<html>not an image</html>" * 8, 422),
        "jpeg-half-with-end-marker": (jpeg_half_with_end_marker(image), 422),
        "jpeg-truncated": (jpeg[: len(jpeg) // 2], 422),
        "jpeg-header-only": (jpeg[:600], 422),
        "png-short-image-data": (png_short_image_data(image), 422),
        "png-corrupt-image-data": (png_corrupt_image_data(image), 422),
        "png-truncated": (encode(image, "PNG")[:-100], 422),
        "webp-truncated": (encode(image, "WEBP", quality=80)[:200], 422),
        "bmp-truncated": (encode(image, "BMP")[:500], 422),
        "bmp-huge-canvas": (
            b"BM"
            + struct.pack("<IHHI", 0, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, 100000, 100000, 1, 24, 0, 0, 0, 0, 0, 0),
            413,
        ),
        "png-bomb": (png_bomb(), 413),
    }


# --- the mutation corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    accepted: bool  # a format the service accepts


def seeds() -> list[Seed]:
    """Valid files of every accepted format in its common variants, and some refused ones."""
    pic = _picture(48, seed=1)
    odd = _picture(37, seed=2).resize((37, 29))
    grey = pic.convert("L")
    rgba = pic.convert("RGBA")
    palette = pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return [
        Seed("jpeg-baseline", encode(pic, "JPEG", quality=85), True),
        Seed("jpeg-progressive", encode(pic, "JPEG", quality=85, progressive=True), True),
        Seed("jpeg-restart", encode(odd, "JPEG", quality=70, restart_marker_blocks=2), True),
        Seed("jpeg-grey-444", encode(grey, "JPEG", quality=95, subsampling=0), True),
        Seed("png-rgb", encode(pic, "PNG"), True),
        Seed(
            "png-rgba-interlaced", encode(rgba, "PNG", interlace=1) if _can_interlace() else encode(rgba, "PNG"), True
        ),
        Seed("png-palette", encode(palette, "PNG", transparency=0), True),
        Seed("png-grey16", encode(Image.fromarray(np.asarray(grey, np.uint16) * 257), "PNG"), True),
        Seed("webp-lossy", encode(pic, "WEBP", quality=70), True),
        Seed("webp-lossless", encode(rgba, "WEBP", lossless=True), True),
        Seed("bmp-rgb", encode(odd, "BMP"), True),
        Seed("bmp-palette", encode(palette, "BMP"), True),
        Seed("gif", encode(palette, "GIF"), False),
        Seed("tiff", encode(pic, "TIFF"), False),
        Seed("dds", dds_minimal(), False),
    ]


def _can_interlace() -> bool:
    try:
        encode(Image.new("RGB", (2, 2)), "PNG", interlace=1)
    except (TypeError, ValueError, OSError):
        return False
    return True


_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits: bit flips, interesting bytes, truncation, cut-outs, repeats,
    inserted bytes, or an end marker appended after a cut."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        kind = rng.randrange(8)
        at = rng.randrange(len(out))
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice(_INTERESTING)
        elif kind == 2:
            del out[at:]
        elif kind == 3:
            del out[at : at + rng.randint(1, 64)]
        elif kind == 4:
            piece = out[at : at + rng.randint(1, 64)]
            out[at:at] = piece * rng.randint(1, 16)
        elif kind == 5:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 6:
            # A header field set to an extreme: four bytes near the start.
            head = rng.randrange(min(len(out), 64))
            out[head : head + 4] = rng.choice(
                (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00")
            )
        else:
            del out[at:]
            out += b"\xff\xd9"
    return bytes(out)


def mutation_corpus(cases: int, seed: int = 26) -> Iterator[tuple[str, bytes]]:
    """``cases`` mutated files, round-robin over :func:`seeds`; the same ``seed`` gives the
    same files."""
    rng = random.Random(seed)
    pool = seeds()
    for i in range(cases):
        base = pool[i % len(pool)]
        yield f"{base.name}#{i}", mutate(base.data, rng)
