"""Labelled samples and a torch Dataset of rendered faces with their true poker faces.

A sample is a pure function of its seed: identity, emotion, intensity, AU jitter, pose,
light, background and noise all come from one ``numpy`` generator. Its poker face is the
same identity and scene rendered with every action unit at zero.

Protocol (see ``docs/rendered-faces.md``): identity ids live in disjoint ranges per split
(``IDENTITY_RANGES``); item ``i`` of a split uses the generator seeded with
``(seed, split index, i)`` and has label ``i % 8``, so any multiple of 8 items is balanced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from training.render.face import render_pair
from training.render.facs import EMOTIONS, PROTOTYPES, UNILATERAL, action_units
from training.render.params import Identity, Scene, identity_from_id, random_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Disjoint identity-id ranges, so no person is ever in two splits: [start, start + size).
IDENTITY_RANGES: dict[str, tuple[int, int]] = {
    "train": (0, 20_000),
    "val": (1_000_000, 1_000),
    "test": (2_000_000, 1_000),
}
INTENSITY_RANGE = (0.5, 1.0)  # overall expression intensity, uniform
AU_JITTER_RANGE = (0.85, 1.12)  # per-AU factor on top of the intensity, uniform
ASYMMETRY_RANGE = (0.92, 1.0)  # per-half factor of symmetric prototypes: real faces are never symmetric
# Augmentation, applied alike to a face and its poker face.
FLIP_P = 0.5  # horizontal flip probability
GAIN_RANGE = (0.85, 1.15)  # contrast: pixel x gain, uniform
BIAS_RANGE = (-0.06, 0.06)  # brightness: + bias in [0, 1] units, uniform
AUGMENT_STREAM = 7  # last seed word of the augmentation generator, apart from the sample's own stream


def identity_split(identity_id: int) -> str:
    """The split an identity id belongs to; ``ValueError`` outside every range."""
    for split, (start, size) in IDENTITY_RANGES.items():
        if start <= identity_id < start + size:
            return split
    raise ValueError(f"identity id {identity_id} is in no split")


@dataclass(frozen=True)
class Sample:
    """One rendered sample.

    Attributes:
        image: ``(H, W, 3) uint8`` RGB expressive face.
        poker_face: ``(H, W, 3) uint8`` RGB, same identity and scene with all AUs at zero.
        label: index into ``EMOTIONS``.
        identity: identity id.
        aus: ``(2, 14)`` float64 AU intensities used (image-left, image-right halves).
        landmarks: ``(5, 2)`` float64 pixel landmarks of ``image``.
        poker_landmarks: ``(5, 2)`` float64 pixel landmarks of ``poker_face``.
    """

    image: np.ndarray
    poker_face: np.ndarray
    label: int
    identity: int
    aus: np.ndarray
    landmarks: np.ndarray
    poker_landmarks: np.ndarray


def sample_aus(rng: np.random.Generator, label: int) -> np.ndarray:
    """``(2, 14)`` AUs for an emotion: the prototype x a random overall intensity x small jitter.

    Neutral stays exactly zero, so its render equals its poker face.
    """
    emotion = EMOTIONS[label]
    intensity = rng.uniform(*INTENSITY_RANGE)
    weights = {
        code: float(np.clip(w * intensity * rng.uniform(*AU_JITTER_RANGE), 0.0, 1.0))
        for code, w in PROTOTYPES[emotion].items()
    }
    if emotion in UNILATERAL:
        return action_units(left=weights) if rng.uniform() < 0.5 else action_units(right=weights)
    aus = action_units(weights)
    if weights:  # real faces are never perfectly symmetric
        aus = np.clip(aus * rng.uniform(*ASYMMETRY_RANGE, aus.shape) * (aus > 0), 0.0, 1.0)
    return aus


def sample_parameters(
    seed: int | tuple[int, ...], identity_range: tuple[int, int] = IDENTITY_RANGES["train"], label: int | None = None
) -> tuple[int, Identity, np.ndarray, Scene, int]:
    """Draw ``(label, identity, aus, scene, identity_id)`` from one seed (an int or an int tuple)."""
    rng = np.random.default_rng(seed)
    start, size = identity_range
    identity_id = start + int(rng.integers(size))
    if label is None:
        label = int(rng.integers(len(EMOTIONS)))
    aus = sample_aus(rng, label)
    scene = random_scene(rng)
    return label, identity_from_id(identity_id), aus, scene, identity_id


def render_sample(
    seed: int | tuple[int, ...],
    size: int = 112,
    label: int | None = None,
    identity_range: tuple[int, int] = IDENTITY_RANGES["train"],
) -> Sample:
    """Render one labelled sample and its true poker face; identical bytes for the same seed."""
    label, idn, aus, scene, identity_id = sample_parameters(seed, identity_range, label)
    face, poker = render_pair(idn, aus, scene, size)
    return Sample(face.image, poker.image, label, identity_id, aus, face.landmarks, poker.landmarks)


def augment_pair(image: np.ndarray, poker: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip and brightness/contrast change, the same draw for a face and its
    poker face (``(H, W, 3)`` float32 in [0, 1] each, results clipped to [0, 1])."""
    if rng.uniform() < FLIP_P:
        image, poker = image[:, ::-1], poker[:, ::-1]
    gain, bias = rng.uniform(*GAIN_RANGE), rng.uniform(*BIAS_RANGE)
    return np.clip(image * gain + bias, 0.0, 1.0), np.clip(poker * gain + bias, 0.0, 1.0)


class RenderedFaceDataset(Dataset):
    """Rendered faces with labels and true poker faces, split by identity.

    Args:
        split: "train", "val" or "test"; each draws identities from its own id range.
        image_size: side of the square images in pixels.
        length: number of items; labels cycle through the 8 classes (``label = i % 8``).
        seed: dataset seed; item ``i`` is a pure function of ``(seed, split, i)``
            (and of the epoch set with ``set_epoch`` when ``augment`` is on).
        augment: random horizontal flip and mild brightness/contrast change, applied
            identically to the image and its poker face.

    Items are dicts: ``image`` and ``poker_face`` ``(3, H, W) float32`` RGB in [0, 1],
    ``label`` and ``identity`` int64 scalars.
    """

    def __init__(self, split: str, image_size: int, length: int, seed: int = 0, augment: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if length <= 0 or image_size <= 0:
            raise ValueError("length and image_size must be positive")
        self.split = split
        self.image_size = image_size
        self.length = length
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self.labels: list[str] = list(EMOTIONS)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw; the un-augmented content never changes."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        split_index = SPLITS.index(self.split)
        s = render_sample(
            (self.seed, split_index, index),
            self.image_size,
            label=index % len(EMOTIONS),
            identity_range=IDENTITY_RANGES[self.split],
        )
        image = s.image.astype(np.float32) / 255.0  # (H, W, 3)
        poker = s.poker_face.astype(np.float32) / 255.0
        if self.augment:
            rng = np.random.default_rng((self.seed, split_index, index, self.epoch, AUGMENT_STREAM))
            image, poker = augment_pair(image, poker, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # (3, H, W)
            "label": torch.tensor(s.label, dtype=torch.int64),
            "poker_face": torch.from_numpy(np.ascontiguousarray(poker.transpose(2, 0, 1))),
            "identity": torch.tensor(s.identity, dtype=torch.int64),
        }
