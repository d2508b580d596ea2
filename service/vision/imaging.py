"""Image bytes <-> arrays: decoding with limits, EXIF orientation, PNG encoding, resizing.

Arrays are ``(H, W, 3) uint8`` in RGB order throughout.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import EmptyUpload, ImageTooLarge, InvalidImage, UnsupportedMediaType

# Formats accepted from clients. MPO is what many cameras write for JPEG files.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})
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
    def from_array(cls, image: np.ndarray, *, max_side: int | None = None) -> "Picture":
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
            img.draft(img.mode, (math.ceil(width * ratio), math.ceil(height * ratio)))
        drafted = img.size != (width, height)
        # EXIF orientations 5 to 8 turn the photo by 90 degrees: its upright sides swap.
        upright = (height, width) if _exif_orientation(img) in (5, 6, 7, 8) else (width, height)
        rgb = _load_upright_rgb(img, max_pixels)
    size = side_size(rgb.width, rgb.height, max_side)
    if size is None and not drafted:
        return Picture.from_array(_as_array(rgb))
    full: Callable[[], np.ndarray] = (lambda: decode_image(data, max_pixels=max_pixels)) if drafted else (lambda: _as_array(rgb))
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
    except (OSError, ValueError, TypeError, SyntaxError):
        return 1  # unreadable EXIF: exif_transpose leaves the photo as stored too


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open the bytes lazily (header only) and check format and declared size."""
    if not data:
        raise EmptyUpload("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that applies; Pillow's warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image declares too many pixels (limit {max_pixels})") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("the uploaded bytes are not a recognisable image") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"image header could not be read: {exc}") from exc
    try:
        fmt = (img.format or "").upper()
        if fmt not in ACCEPTED_FORMATS:
            raise UnsupportedMediaType(
                f"image format {fmt or 'unknown'} is not accepted; send JPEG, PNG, WebP or BMP",
                format=fmt or None,
            )
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has an empty canvas ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                width=width,
                height=height,
            )
    except Exception:
        img.close()
        raise
    return img


def _load_upright_rgb(img: Image.Image, max_pixels: int) -> Image.Image:
    """The opened image decoded, upright, as an RGB Pillow image (``img`` itself when it is one)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright photo
            return _to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image declares too many pixels (limit {max_pixels})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"image data is truncated or corrupt: {exc}") from exc


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
