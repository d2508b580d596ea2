"""How far our detector is from facenet-pytorch on the astronaut fixture, and what that does to
the aligned face and to the shipped model's answer.

    python tools/detector_fidelity.py

facenet-pytorch's box and landmarks were recorded once (2.6.0, default settings, 0.1 px);
``tests/test_mtcnn.py`` checks the detector against the same values. Prints the largest box
and landmark differences, the boxes' IoU, how far each pixel of the aligned crop (the shipped
model's input size) samples the photo apart under the two sets of landmarks, and the model's
label and probabilities on both crops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.config import Settings  # noqa: E402
from service.models import EmotionModel  # noqa: E402
from service.vision.align import align_face, estimate_similarity, template_landmarks  # noqa: E402
from service.vision.imaging import decode_image  # noqa: E402
from service.vision.mtcnn import MTCNN  # noqa: E402

# facenet_pytorch.MTCNN() (2.6.0, defaults) on tests/fixtures/astronaut.png.
FACENET_BOX = np.array([181.1, 62.2, 267.7, 172.1])  # x1, y1, x2, y2
FACENET_SCORE = 0.99999
FACENET_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _sampling_shift(ours: np.ndarray, theirs: np.ndarray, size: int) -> np.ndarray:
    """Per crop pixel: how far apart the two alignments sample the photo, in crop pixels."""
    m1 = estimate_similarity(ours, template_landmarks(size))
    m2 = estimate_similarity(theirs, template_landmarks(size))
    ys, xs = np.mgrid[0:size, 0:size]
    grid = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)  # (size * size, 2) x, y

    def source(m: np.ndarray) -> np.ndarray:
        return (grid - m[:, 2]) @ np.linalg.inv(m[:, :2]).T

    return np.linalg.norm(source(m1) - source(m2), axis=1) * float(np.hypot(m1[0, 0], m1[1, 0]))


def main() -> int:
    image = decode_image((REPO / "tests" / "fixtures" / "astronaut.png").read_bytes(), max_pixels=10**8)
    (face,) = MTCNN.from_dir(REPO / "models" / "mtcnn", intra_op_threads=1).detect(image)
    box, landmarks = np.asarray(face.box, np.float64), np.asarray(face.landmarks, np.float64)
    box_diff = np.abs(box - FACENET_BOX)
    landmark_dist = np.linalg.norm(landmarks - FACENET_LANDMARKS, axis=1)
    print(f"box: largest difference {box_diff.max():.2f} px (x1, y1, x2, y2: {np.round(box_diff, 2).tolist()})")
    print(f"landmarks: largest distance {landmark_dist.max():.2f} px, mean {landmark_dist.mean():.2f} px")
    print(f"box IoU with facenet-pytorch's: {_iou(box, FACENET_BOX):.3f}")

    settings = Settings(_env_file=None)
    model = EmotionModel.from_dir(settings.emotion_model_dir, providers=["CPUExecutionProvider"], intra_op_threads=1)
    size = model.input_hw[0]
    ours, _ = align_face(image, landmarks, size)
    theirs, _ = align_face(image, FACENET_LANDMARKS, size)
    shift = _sampling_shift(landmarks, FACENET_LANDMARKS, size)
    print(
        f"aligned {size} px crop: the two alignments sample the photo {shift.max():.2f} px apart at most, "
        f"{shift.mean():.2f} px on average; mean |pixel difference| "
        f"{np.abs(ours.astype(np.int16) - theirs).mean():.1f} of 255"
    )
    p_ours, p_theirs = (model.recognise(crop[None]).probabilities[0] for crop in (ours, theirs))
    labels = model.labels
    print(
        f"{settings.emotion_model}: {labels[int(p_ours.argmax())]} (ours), {labels[int(p_theirs.argmax())]} "
        f"(facenet-pytorch's landmarks); largest probability difference {np.abs(p_ours - p_theirs).max():.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
