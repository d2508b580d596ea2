"""Figures drawn with PIL (no matplotlib): confusion matrix and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.vision.align import to_uint8_images


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def confusion_matrix_png(matrix: np.ndarray, labels: list[str], path: str | Path, cell_px: int = 56) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG.

    Cells are shaded by the row-normalised rate (recall per true class) and show the count
    and the rate; the shading is row-normalised so rare classes stay readable.

    Args:
        matrix: ``(K, K)`` integer counts.
        labels: K class names.
        path: output file.
        cell_px: side of one cell in pixels.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    font = _font()
    margin_left, margin_top = 96, 96
    size = (margin_left + k * cell_px + 8, margin_top + k * cell_px + 24)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    rates = matrix / rows
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1 - rates[i, j]))
            x0, y0 = margin_left + j * cell_px, margin_top + i * cell_px
            draw.rectangle(
                [x0, y0, x0 + cell_px - 1, y0 + cell_px - 1], fill=(shade, shade, 255), outline=(200, 200, 200)
            )
            colour = "white" if rates[i, j] > 0.5 else "black"
            draw.text((x0 + 4, y0 + 8), str(int(matrix[i, j])), fill=colour, font=font)
            draw.text((x0 + 4, y0 + 28), f"{rates[i, j]:.2f}", fill=colour, font=font)
    for i, name in enumerate(labels):
        draw.text((4, margin_top + i * cell_px + cell_px // 2 - 6), name[:14], fill="black", font=font)
        # Column names written diagonally is not possible with the default bitmap font; stack them.
        x0 = margin_left + i * cell_px + 2
        draw.text((x0, margin_top - 28 - 12 * (i % 2)), name[:9], fill="black", font=font)
    draw.text((margin_left, size[1] - 18), "rows: true, columns: predicted", fill="black", font=font)
    draw.text((4, 4), "confusion matrix", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def image_grid_png(columns: list[tuple[str, np.ndarray]], path: str | Path, pad_px: int = 2) -> Path:
    """One row per sample, one column per named image set (e.g. input | reconstruction | poker face).

    Args:
        columns: ``(title, images)`` pairs; images are ``(B, 3, H, W)`` float RGB in [0, 1], all
            with the same B, H and W.
        path: output file.
        pad_px: white gap between tiles.
    """
    tiles = [(title, to_uint8_images(images)) for title, images in columns]
    b, h, w, _ = tiles[0][1].shape
    header = 16
    width = len(tiles) * (w + pad_px) + pad_px
    height = header + b * (h + pad_px) + pad_px
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for c, (title, imgs) in enumerate(tiles):
        x0 = pad_px + c * (w + pad_px)
        draw.text((x0 + 1, 2), title[: max(1, w // 6)], fill="black", font=font)
        for r in range(b):
            canvas.paste(Image.fromarray(imgs[r]), (x0, header + pad_px + r * (h + pad_px)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
