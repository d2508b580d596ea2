"""Image bytes <-> arrays: decoding with limits, EXIF orientation, PNG encoding, resizing.

Arrays are ``(H, W, 3) uint8`` in RGB order throughout.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import EmptyUpload, ImageTooLarge, InternalError, InvalidImage, UnsupportedMediaType

# Formats accepted from clients, found by their magic bytes (:func:`sniff_format`); Pillow
# opens a JPEG that many cameras write with a second picture (MPO) as the first picture.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
# Formats Pillow can decode at a reduced scale (JPEG's DCT scaling).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# A truncated file must be an error, never a half-grey image scored as a face.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes into an upright ``(H, W, 3) uint8`` RGB array at full resolution.

    The declared size is checked against ``max_pixels`` before any pixel is decoded, so a
    small file that declares a huge canvas (a decompression bomb) costs nothing. EXIF
    orientation is applied.

    Raises:
        EmptyUpload: no bytes.
        UnsupportedMediaType: a recognised image format other than JPEG, PNG, WebP or BMP.
        ImageTooLarge: more than ``max_pixels`` pixels.
        InvalidImage: anything that does not decode cleanly (garbage, truncated, corrupt).
    """
    with _open_checked(data, max_pixels) as img:
        return _as_array(_load_upright_rgb(img, max_pixels))


@dataclass
class Picture:
    """One photo, ready for face detection.

    ``pixels`` is what the detector reads: the upright photo, reduced so that its long side is
    at most the bound it was decoded with (a JPEG is reduced while decoding, in the DCT
    domain). ``width`` x ``height`` is the full-resolution upright size; :meth:`full` returns
    those pixels, decoding them only when first asked (when a face's crop needs them).
    """

    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    width: int
    height: int
    # The full-resolution pixels, or how to decode them (replaced by its result on first use).
    _full: np.ndarray | Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_array(cls, image: np.ndarray, *, max_side: int | None = None) -> Picture:
        """Wrap decoded ``(H, W, 3) uint8`` RGB pixels, reduced to ``max_side`` if longer."""
        height, width = image.shape[:2]
        return cls(pixels=reduce_to_side(image, max_side), width=width, height=height, _full=image)

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[0] != self.height or self.pixels.shape[1] != self.width

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: detection pixels per full-resolution pixel (1.0 when not reduced)."""
        return self.pixels.shape[1] / self.width, self.pixels.shape[0] / self.height

    def to_full(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` ``(x, y)`` points from ``pixels`` to full-resolution coordinates
        (pixel centres on integers in both)."""
        sx, sy = self.scale
        points = np.asarray(points, dtype=np.float64)
        return (points + 0.5) / np.array([sx, sy]) - 0.5

    def full(self) -> np.ndarray:
        """The full-resolution ``(H, W, 3) uint8`` RGB pixels (decoded once, on first use)."""
        if not self.reduced:
            return self.pixels
        if callable(self._full):
            self._full = self._full()
        if self._full is None:
            raise RuntimeError("this picture keeps no way back to its full resolution")
        return self._full


def decode_picture(data: bytes, *, max_pixels: int, max_side: int | None) -> Picture:
    """Decode uploaded bytes for detection: like :func:`decode_image`, but with the long side
    reduced to ``max_side`` (None: never reduced).

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that still holds
    ``max_side`` pixels, which skips most of the decoding work on a big photo; the rest of the
    way is a box-filter resize of the decoded image, before it becomes an array. The
    full-resolution array is made only if :meth:`Picture.full` is called (a DCT-scaled JPEG is
    then decoded again).

    Raises:
        The errors of :func:`decode_image`.
    """
    with _open_checked(data, max_pixels) as img:
        width, height = img.size
        if max_side and max(width, height) > max_side and img.format in _DRAFT_FORMATS:
            ratio = max_side / max(width, height)
            with image_faults(max_pixels):
                img.draft(img.mode, (math.ceil(width * ratio), math.ceil(height * ratio)))
        drafted = img.size != (width, height)
        # EXIF orientations 5 to 8 turn the photo by 90 degrees: its upright sides swap.
        upright = (height, width) if _exif_orientation(img) in (5, 6, 7, 8) else (width, height)
        rgb = _load_upright_rgb(img, max_pixels)
    size = side_size(rgb.width, rgb.height, max_side)
    if size is None and not drafted:
        return Picture.from_array(_as_array(rgb))
    full: Callable[[], np.ndarray] = (
        (lambda: decode_image(data, max_pixels=max_pixels)) if drafted else (lambda: _as_array(rgb))
    )
    reduced = rgb if size is None else rgb.resize(size, Image.Resampling.BOX)
    return Picture(pixels=_as_array(reduced), width=upright[0], height=upright[1], _full=full)


def side_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` with the long side reduced to ``max_side``; None when it is not longer."""
    if not max_side or max(height, width) <= max_side:
        return None
    ratio = max_side / max(height, width)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def reduce_to_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` with its long side reduced to ``max_side`` by a box filter (area average);
    the same array when it is already short enough or ``max_side`` is None."""
    size = side_size(image.shape[1], image.shape[0], max_side)
    if size is None:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    return np.asarray(pil.resize(size, Image.Resampling.BOX), dtype=np.uint8)


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except PILLOW_FAULTS:
        return 1  # unreadable EXIF: exif_transpose leaves the photo as stored too


# What Pillow's openers, decoders and metadata readers raise on hostile bytes. Beyond OSError
# and ValueError, its plugins let slip struct.error (short reads), NotImplementedError (a
# variant a plugin does not handle), IndexError, KeyError, TypeError and ZeroDivisionError
# (nonsense in a header field). Caught only around Pillow calls on untrusted bytes, never
# around our own code.
PILLOW_FAULTS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    NotImplementedError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)

# Per-image bounds on structure, checked before any Pillow plugin parses the bytes: Pillow
# walks JPEG segments and PNG chunks in Python, so a file of millions of empty ones would
# hold a thread for seconds. Real files have a few dozen segments; encoders that split PNG
# image data into small chunks stay far below the chunk bound.
MAX_JPEG_SEGMENTS = 1024
MAX_PNG_CHUNKS = 65_536

# Magic bytes of formats Pillow (or a browser) knows but the service does not accept: a 415
# that names the format, without handing the bytes to the plugin that would parse them.
_REFUSED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"DDS ", "DDS"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"icns", "ICNS"),
    (0, b"qoif", "QOI"),
    (0, b"%PDF", "PDF"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (0, b"\xff\x0a", "JPEGXL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEGXL"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)

_JPEG_FILL = re.compile(rb"\xff+")
# A marker inside entropy-coded data: 0xFF followed by neither a stuffed zero, a restart
# marker nor another fill byte.
_JPEG_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
# Huffman-coded sequential frames (baseline, extended): one scan is read as it decodes.
_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Bytes given to the JPEG decoder after the entropy-coded data in place of the end marker.
_JPEG_TAIL = bytes(8)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sniff_format(data: bytes) -> str:
    """The accepted format the bytes open with (``JPEG``, ``PNG``, ``WEBP`` or ``BMP``),
    from their magic bytes alone.

    Raises:
        EmptyUpload: no bytes.
        UnsupportedMediaType: a known image format that the service does not accept.
        InvalidImage: anything else.
    """
    if not data:
        raise EmptyUpload("the uploaded file is empty")
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == _PNG_SIGNATURE:
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    for offset, magic, name in _REFUSED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            raise UnsupportedMediaType(f"image format {name} is not accepted; send JPEG, PNG, WebP or BMP", format=name)
    raise InvalidImage("the uploaded bytes are not a recognisable image; send JPEG, PNG, WebP or BMP")


@contextmanager
def image_faults(max_pixels: int) -> Iterator[None]:
    """The one place where what Pillow raises on untrusted bytes becomes our errors:
    a decompression bomb is ``ImageTooLarge``, every other fault ``InvalidImage``."""
    try:
        with warnings.catch_warnings():
            # Our own limit is the one that applies; Pillow's warnings about odd files are noise.
            warnings.simplefilter("ignore")
            yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image declares too many pixels (limit {max_pixels})") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("the uploaded bytes are not a recognisable image") from exc
    except PILLOW_FAULTS as exc:
        raise InvalidImage(f"image data is truncated or corrupt: {exc}") from exc


def _jpeg_for_decoder(data: bytes) -> bytes:
    """Walk a JPEG's segments (at most ``MAX_JPEG_SEGMENTS``) and return the bytes to decode.

    libjpeg fills a scan that ends early with grey and only warns, and Pillow drops the
    warning, so a file cut short with an end marker appended decodes "cleanly". For a
    single-scan Huffman JPEG (nearly every camera and encoder) the decoder is given the scan
    followed by a few zero bytes instead of the end marker: a complete scan decodes to the
    same pixels, a scan cut short runs out of data and Pillow reports it truncated.
    """
    size = len(data)
    pos = 2
    segments = 0
    scans = 0
    frame = None
    while True:
        if pos >= size:
            return data  # no end marker: Pillow decides (a cut inside a scan fails there)
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)  # junk between segments, which Pillow skips too
            if nxt < 0:
                return data
            pos = nxt
        fill_end = _JPEG_FILL.match(data, pos)
        if fill_end is None:  # data[pos] is 0xFF here, so the run has at least that byte
            raise InternalError("JPEG walk: no marker fill where one must be")
        code_at = fill_end.end()
        if code_at >= size:
            return data
        marker = data[code_at]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImage(f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments; no real photo has that many")
        if marker == 0xD9:  # end of image
            if scans == 1 and frame in _SEQUENTIAL_HUFFMAN:
                return data[:pos] + _JPEG_TAIL
            return data
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            pos = code_at + 1
            continue
        if code_at + 3 > size:
            return data
        length = int.from_bytes(data[code_at + 1 : code_at + 3], "big")
        if length < 2:
            raise InvalidImage(f"the JPEG has a segment of impossible length {length}")
        end = code_at + 1 + length
        if marker in _SOF_MARKERS:
            frame = marker
        if marker == 0xDA:  # start of scan: skip its entropy-coded data to the next marker
            scans += 1
            found = _JPEG_SCAN_END.search(data, end)
            if found is None:
                return data
            pos = found.start()
            continue
        pos = end


def _png_chunks(data: bytes, *, check_crc: bool) -> Iterator[tuple[bytes, int, int]]:
    """``(type, start, end)`` of the chunks' data, at most ``MAX_PNG_CHUNKS``, each one's CRC
    checked if asked."""
    pos = len(_PNG_SIGNATURE)
    size = len(data)
    count = 0
    while pos + 12 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        start, end = pos + 8, pos + 8 + length
        if end + 4 > size:
            raise InvalidImage(f"the PNG is truncated inside its {kind!r} chunk")
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise InvalidImage(f"the PNG has more than {MAX_PNG_CHUNKS} chunks; no real image has that many")
        if check_crc and zlib.crc32(memoryview(data)[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            raise InvalidImage(f"the PNG's {kind.decode('latin-1')!r} chunk fails its checksum (corrupt data)")
        yield kind, start, end
        if kind == b"IEND":
            return
        pos = end + 4
    raise InvalidImage("the PNG is truncated: it ends before its IEND chunk")


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunks (a bounded count) before Pillow's opener walks them in Python."""
    for _ in _png_chunks(data, check_crc=False):
        pass


# Bits per pixel of each PNG colour type (IHDR byte 9), per bit of sample depth.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(ihdr: bytes) -> int:
    """Bytes the image data inflates to: each row's filter byte plus its packed samples
    (per Adam7 pass for interlaced files)."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    bits = depth * _PNG_CHANNELS.get(colour, 0)
    if not bits:
        raise InvalidImage(f"the PNG declares an unknown colour type {colour}")

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if interlace == 0:
        return rows(width, height)
    return sum(
        rows((width - x0 + dx - 1) // dx if width > x0 else 0, (height - y0 + dy - 1) // dy if height > y0 else 0)
        for x0, y0, dx, dy in _ADAM7
    )


def _check_png_data(data: bytes) -> None:
    """Every chunk's CRC is right, and the image data is one whole zlib stream of exactly the
    declared size.

    Pillow stops inflating once it has the rows it needs and leaves rows a short stream
    never filled black; a corrupt stream whose chunk checksums were recomputed would pass
    the chunk walk. Inflated here in bounded pieces, nothing kept.
    """
    chunks = _png_chunks(data, check_crc=True)
    inflater = zlib.decompressobj()
    expected = None
    total = 0
    view = memoryview(data)
    for kind, start, end in chunks:
        if kind == b"IHDR" and end - start == 13:
            expected = _png_raw_size(bytes(view[start:end]))
        elif kind == b"IDAT":
            if inflater.eof:
                raise InvalidImage("the PNG has image data after the end of its compressed stream")
            piece = view[start:end]
            while piece:
                try:
                    out = inflater.decompress(piece, 1 << 20)
                except zlib.error as exc:
                    raise InvalidImage(f"the PNG's image data is corrupt: {exc}") from None
                total += len(out)
                if expected is not None and total > expected:
                    raise InvalidImage("the PNG's image data is longer than its declared size")
                piece = memoryview(inflater.unconsumed_tail)
    if not inflater.eof or (expected is not None and total != expected):
        raise InvalidImage("the PNG's image data is truncated or corrupt: it does not hold every row")


def _prepare(data: bytes) -> tuple[str, bytes]:
    """Allow-list the format by magic bytes and bound the file's structure, before any
    Pillow plugin parses it; returns the format and the bytes to hand to Pillow."""
    fmt = sniff_format(data)
    if fmt == "JPEG":
        return fmt, _jpeg_for_decoder(data)
    if fmt == "PNG":
        _check_png_chunks(data)
    return fmt, data


def probe_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` declared by an upload's header, with the format allow-listed and
    the structure bounded first; nothing is decoded.

    Raises:
        The errors of :func:`decode_image`, except for faults only decoding finds.
    """
    with _open_checked(data, max_pixels) as img:
        width, height = img.size
        return width, height


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open the bytes lazily (header only) and check format and declared size."""
    fmt, prepared = _prepare(data)
    with image_faults(max_pixels):
        img = Image.open(io.BytesIO(prepared), formats=[fmt])
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has an empty canvas ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                width=width,
                height=height,
            )
        if fmt == "PNG":
            _check_png_data(prepared)
    except BaseException:
        img.close()
        raise
    return img


def _load_upright_rgb(img: Image.Image, max_pixels: int) -> Image.Image:
    """The opened image decoded, upright, as an RGB Pillow image (``img`` itself when it is one)."""
    with image_faults(max_pixels):
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright photo
        return _to_rgb(img)


def _as_array(rgb: Image.Image) -> np.ndarray:
    """An RGB Pillow image's pixels, ``(H, W, 3) uint8``, in an array of their own."""
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting Pillow clip.
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent areas onto white rather than exposing hidden colours.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        img = canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, 3) uint8`` RGB -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, 3) uint8`` RGB array to ``size = (width, height)``, bilinear (antialiased)."""
    width, height = int(size[0]), int(size[1])
    if image.shape[1] == width and image.shape[0] == height:
        return image
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB")
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
