"""Image bytes <-> arrays: decoding with limits, EXIF orientation, PNG encoding, resizing.

Arrays are ``(H, W, 3) uint8`` in RGB order throughout.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import EmptyUpload, ImageTooLarge, InvalidImage, UnsupportedMediaType

# Formats accepted from clients. MPO is what many cameras write for JPEG files.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})

# A truncated file must be an error, never a half-grey image scored as a face.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes into an upright ``(H, W, 3) uint8`` RGB array.

    The declared size is checked against ``max_pixels`` before any pixel is decoded, so a
    small file that declares a huge canvas (a decompression bomb) costs nothing. EXIF
    orientation is applied.

    Raises:
        EmptyUpload: no bytes.
        UnsupportedMediaType: a recognised image format other than JPEG, PNG, WebP or BMP.
        ImageTooLarge: more than ``max_pixels`` pixels.
        InvalidImage: anything that does not decode cleanly (garbage, truncated, corrupt).
    """
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

    with img:
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
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = _to_rgb(upright)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image declares too many pixels (limit {max_pixels})") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InvalidImage(f"image data is truncated or corrupt: {exc}") from exc
    return rgb


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting Pillow clip.
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent areas onto white rather than exposing hidden colours.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        img = canvas
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


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
