import io

import numpy as np
import pytest
from PIL import Image

from service.errors import EmptyUpload, ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.vision.imaging import decode_image, encode_png, resize_rgb
from tests.images import encode, png_bomb, with_exif_orientation

LIMIT = 40_000_000


@pytest.mark.parametrize(
    "fmt,options,lossless",
    [
        ("PNG", {}, True),
        ("BMP", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("WEBP", {"quality": 80}, False),
        ("JPEG", {"quality": 90}, False),
    ],
    ids=["png", "bmp", "webp-lossless", "webp-lossy", "jpeg"],
)
def test_decodes_accepted_formats(astronaut_rgb, fmt, options, lossless):
    out = decode_image(encode(astronaut_rgb, fmt, **options), max_pixels=LIMIT)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    if lossless:
        assert np.array_equal(out, astronaut_rgb)
    else:
        error = np.abs(out.astype(int) - astronaut_rgb)
        assert error.max() > 0  # really lossy: the decoder is not handed the original pixels
        assert error.mean() < 4


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(astronaut_rgb, orientation):
    out = decode_image(with_exif_orientation(astronaut_rgb, orientation), max_pixels=LIMIT)
    assert out.shape == astronaut_rgb.shape
    assert np.abs(out.astype(int) - astronaut_rgb).mean() < 4


def test_greyscale_rgba_and_16bit_become_rgb():
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    assert decode_image(encode(grey, "PNG"), max_pixels=LIMIT).shape == (8, 64, 3)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red but fully transparent -> white background
    assert (decode_image(encode(rgba, "PNG"), max_pixels=LIMIT) == 255).all()
    deep = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    out = decode_image(encode(deep, "PNG"), max_pixels=LIMIT)
    assert out.shape == (4, 4, 3) and out.max() == 255


def test_errors():
    with pytest.raises(EmptyUpload):
        decode_image(b"", max_pixels=LIMIT)
    with pytest.raises(InvalidImage):
        decode_image(b"definitely not an image" * 10, max_pixels=LIMIT)
    with pytest.raises(UnsupportedMediaType):
        decode_image(encode(np.zeros((8, 8, 3), np.uint8), "GIF"), max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge):
        decode_image(png_bomb(), max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge):
        decode_image(encode(np.zeros((100, 100, 3), np.uint8), "PNG"), max_pixels=9_999)


def test_truncated_jpeg_is_invalid(astronaut_rgb):
    data = encode(astronaut_rgb, "JPEG", quality=90)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_png_round_trip_and_resize(astronaut_rgb):
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(astronaut_rgb)))), astronaut_rgb)
    small = resize_rgb(astronaut_rgb, (100, 50))
    assert small.shape == (50, 100, 3)
    assert resize_rgb(astronaut_rgb, (512, 512)) is astronaut_rgb
