"""Draw docs/expression-maps.png and measure how much of each expression map falls on the true
expression region of rendered faces (whose true poker face the renderer gives).

    python tools/expression_map_figure.py [--model pfvit-micro-ferplus] [--faces 28] [--seed 20261125]

Rows: one rendered face per emotion, then the fixture photo. Columns: the face, its true poker
face (rendered faces only), the model's poker face, the expression map from it, and the true
expression region outlined on the face.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.models import EmotionModel
from service.vision.expression_map import (
    SIGMA_FRACTION,
    expression_map,
    mass_inside,
    overlay,
    true_expression_region,
)
from service.vision.faces import find_faces
from service.vision.imaging import decode_image
from service.vision.mtcnn import MTCNN
from training.served_eval import map_masses

REPO = Path(__file__).resolve().parent.parent
CELL = 144
LABEL_W = 110
HEADER_H = 34


def outline(face: np.ndarray, region: np.ndarray) -> np.ndarray:
    edge = region & ~(np.roll(region, 1, 0) & np.roll(region, -1, 0) & np.roll(region, 1, 1) & np.roll(region, -1, 1))
    out = face.copy()
    out[edge] = (0, 255, 120)
    return out


def cell(image: np.ndarray | None) -> Image.Image:
    if image is None:
        return Image.new("RGB", (CELL, CELL), (235, 235, 240))
    return Image.fromarray(image).resize((CELL, CELL), Image.Resampling.BICUBIC)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pfvit-micro-ferplus", help="a folder under models/, or a model folder's path")
    p.add_argument("--faces", type=int, default=28, help="rendered faces to measure the mass on")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "expression-maps.png")
    args = p.parse_args()

    from training.render.dataset import IDENTITY_RANGES, render_sample
    from training.render.facs import EMOTIONS

    folder = Path(args.model) if Path(args.model).is_dir() else REPO / "models" / args.model
    model = EmotionModel.from_dir(folder, providers=["CPUExecutionProvider"], intra_op_threads=1)
    size = model.input_hw[0]
    sigma = SIGMA_FRACTION * size
    expressive = [i for i, name in enumerate(EMOTIONS) if name != "neutral"]

    # --- measure
    samples = [
        render_sample(
            (args.seed, j), size, label=expressive[j % len(expressive)], identity_range=IDENTITY_RANGES["test"]
        )
        for j in range(args.faces)
    ]
    faces = np.stack([s.image for s in samples])
    generated = model.poker_faces(faces)
    masses, areas = map_masses(faces, np.stack([s.poker_face for s in samples]), generated)
    masses_a = masses[np.isfinite(masses)]
    empty = len(masses) - len(masses_a)
    print(
        f"model {args.model}, {args.faces} rendered faces (seed {args.seed}): {empty} empty maps; "
        f"non-empty maps put {masses_a.mean():.3f} of their mass (min {masses_a.min():.3f}, median "
        f"{np.median(masses_a):.3f}) "
        f"inside the true expression region, which covers {np.mean(areas):.3f} of the face"
    )

    # --- draw: one face per emotion, then the fixture photo
    rows = []
    for label in expressive:
        s = next(x for x in samples if x.label == label)
        gen = model.poker_faces(s.image[None])[0]
        region = true_expression_region(s.image, s.poker_face, sigma)
        heat = expression_map(s.image, gen)
        note = f"mass in: {mass_inside(heat, region):.0%}" if heat.any() else "empty map"
        rows.append(
            (EMOTIONS[label], [s.image, s.poker_face, gen, overlay(s.image, heat), outline(s.image, region)], note)
        )
    photo = decode_image((REPO / "tests" / "fixtures" / "astronaut.png").read_bytes(), max_pixels=40_000_000)
    detector = MTCNN.from_dir(REPO / "models" / "mtcnn", providers=["CPUExecutionProvider"], intra_op_threads=1)
    aligned = find_faces(detector, photo, size=size, min_face_size=20, threshold=0.7, max_faces=1)[0].aligned
    gen = model.poker_faces(aligned[None])[0]
    rows.append(("photo", [aligned, None, gen, overlay(aligned, expression_map(aligned, gen)), None], "(no truth)"))

    headers = ["face", "true poker face", "model's poker face", "expression map", "true region"]
    sheet = Image.new("RGB", (LABEL_W + CELL * len(headers), HEADER_H + CELL * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(headers):
        draw.text((LABEL_W + c * CELL + 6, 10), text, fill=(30, 30, 40))
    for r, (name, images, note) in enumerate(rows):
        y = HEADER_H + r * CELL
        draw.text((8, y + CELL // 2 - 12), name, fill=(30, 30, 40))
        draw.text((8, y + CELL // 2 + 4), note, fill=(90, 90, 100))
        for c, image in enumerate(images):
            sheet.paste(cell(image), (LABEL_W + c * CELL, y))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
