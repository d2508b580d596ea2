"""Image transforms for training and evaluation, in torch only (no torchvision).

Inputs are ``(H, W, 3) uint8`` RGB arrays (what ``service.vision`` produces); outputs are
``(3, H, W) float32`` RGB tensors in [0, 1], *not* normalised: mean/std belong to the model
(its card), so the training loop normalises, exactly as the service does after alignment.

The augmentation recipe is the MAE fine-tuning one in ``PFVIT.md``: horizontal flip, colour
jitter 0.25 (brightness, contrast, saturation), random affine (translate 0.1, scale
1.0-1.25) and random erasing. Every random draw goes through an optional
``torch.Generator``, so a fixed seed reproduces an augmented image exactly; with
``generator=None`` the global torch RNG is used, which ``DataLoader`` seeds per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, the ones PIL and torchvision use for greyscale.
LUMA_RGB = (0.299, 0.587, 0.114)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` RGB -> ``(3, H, W) float32`` in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``(3, H, W)`` image to ``size`` x ``size``, bilinear with antialiasing.

    Antialiasing matters when shrinking (e.g. an AffectNet crop to 112): without it,
    bilinear sampling aliases like nearest-neighbour.
    """
    if x.shape[-2:] == (size, size):
        return x
    out = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0.0, 1.0)  # antialiased bilinear can overshoot slightly


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _greyscale(x: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` -> ``(1, H, W)`` luma."""
    w = torch.tensor(LUMA_RGB, dtype=x.dtype).view(3, 1, 1)
    return (x * w).sum(dim=0, keepdim=True)


def to_greyscale(x: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` RGB -> ``(3, H, W)`` with the luma in every channel (a grey picture in RGB)."""
    return _greyscale(x).expand_as(x).clone()


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror a ``(3, H, W)`` image left to right."""
    return x.flip(-1)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale intensities by ``factor`` (1 keeps the image)."""
    return (x * factor).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level (0 gives flat grey, 1 keeps the image)."""
    mean = _greyscale(x).mean()
    return (factor * x + (1.0 - factor) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the greyscale image (0 gives grey, 1 keeps the image)."""
    grey = _greyscale(x)
    return (factor * x + (1.0 - factor) * grey).clamp_(0.0, 1.0)


def colour_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random brightness, contrast and saturation, each factor in ``[max(0, 1 - s), 1 + s]``.

    The three adjustments are applied in a random order, as torchvision's ``ColorJitter``
    does, so no fixed order biases the result.
    """
    ops = []
    if brightness > 0:
        ops.append((adjust_brightness, _uniform(max(0.0, 1 - brightness), 1 + brightness, generator)))
    if contrast > 0:
        ops.append((adjust_contrast, _uniform(max(0.0, 1 - contrast), 1 + contrast, generator)))
    if saturation > 0:
        ops.append((adjust_saturation, _uniform(max(0.0, 1 - saturation), 1 + saturation, generator)))
    for i in torch.randperm(len(ops), generator=generator).tolist():
        fn, factor = ops[i]
        x = fn(x, factor)
    return x


def random_affine(
    x: torch.Tensor,
    translate: float,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random translation (up to ``translate`` of width/height) and zoom, about the centre.

    Uncovered pixels become black (0), torchvision's default fill. A scale above 1 zooms in,
    so with the recipe's 1.0-1.25 the face only ever grows and little border appears.
    """
    _, h, w = x.shape
    s = _uniform(scale[0], scale[1], generator)
    # Shift in pixels, then in grid_sample's normalised units (the image spans [-1, 1]).
    tx = round(_uniform(-translate * w, translate * w, generator)) * 2.0 / w
    ty = round(_uniform(-translate * h, translate * h, generator)) * 2.0 / h
    # affine_grid maps *output* coordinates to input ones, hence the inverse transform:
    # in = (out - t) / s.
    theta = torch.tensor([[1.0 / s, 0.0, -tx / s], [0.0, 1.0 / s, -ty / s]], dtype=x.dtype)
    grid = F.affine_grid(theta[None], [1, 3, h, w], align_corners=False)
    out = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def random_erasing(
    x: torch.Tensor,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (float(np.log(0.3)), float(np.log(1 / 0.3))),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace one random rectangle with uniform noise in [0, 1] (Zhong et al., 2017).

    The rectangle covers a fraction ``area`` of the image with aspect ratio drawn
    log-uniformly. Noise rather than a constant (timm's "pixel" mode, used by the MAE
    fine-tuning recipe) so the network cannot learn to spot a flat patch; drawn in [0, 1]
    because these images are not normalised yet.
    """
    _, h, w = x.shape
    for _ in range(10):  # retry a few times when the drawn box does not fit, as timm does
        target = _uniform(area[0], area[1], generator) * h * w
        ratio = float(np.exp(_uniform(log_ratio[0], log_ratio[1], generator)))
        eh = int(round((target * ratio) ** 0.5))
        ew = int(round((target / ratio) ** 0.5))
        if 0 < eh < h and 0 < ew < w:
            top = int(torch.randint(0, h - eh + 1, (), generator=generator))
            left = int(torch.randint(0, w - ew + 1, (), generator=generator))
            x = x.clone()
            x[:, top : top + eh, left : left + ew] = torch.rand((3, eh, ew), generator=generator, dtype=x.dtype)
            return x
    return x


@dataclass(frozen=True)
class FaceTransform:
    """uint8 RGB face -> ``(3, size, size) float32`` in [0, 1], augmented when ``augment``.

    Args:
        image_size: side of the square output.
        augment: apply the training augmentations; ``False`` only resizes.
        flip_p: probability of a horizontal flip.
        jitter: brightness, contrast and saturation strength.
        translate: largest shift as a fraction of the side.
        scale: zoom range.
        affine_p: probability of the random affine.
        erase_p: probability of random erasing (0.25 as in the MAE fine-tuning recipe).
    """

    image_size: int
    augment: bool = False
    flip_p: float = 0.5
    jitter: float = 0.25
    translate: float = 0.1
    scale: tuple[float, float] = (1.0, 1.25)
    affine_p: float = 1.0
    erase_p: float = 0.25

    def geometry_only(self) -> FaceTransform:
        """The same transform with its geometry (random affine, flip) and no colour jitter or
        erasing: what a critic of real faces should see (docs/pfvit.md, Stage 3)."""
        return replace(self, jitter=0.0, erase_p=0.0)

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        # Resize first: every later step then costs the same whatever the source size.
        x = resize(to_tensor(image), self.image_size)
        if not self.augment:
            return x
        if float(torch.rand((), generator=generator)) < self.affine_p:
            x = random_affine(x, self.translate, self.scale, generator)
        if float(torch.rand((), generator=generator)) < self.flip_p:
            x = hflip(x)
        if self.jitter > 0:
            x = colour_jitter(x, self.jitter, self.jitter, self.jitter, generator)
        if float(torch.rand((), generator=generator)) < self.erase_p:
            x = random_erasing(x, generator=generator)
        return x.contiguous()
