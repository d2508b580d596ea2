"""The ViT building blocks PF-ViT's parts are made of (:mod:`training.model`): positional
embeddings, patchify and MAE's random masking, the pre-norm :class:`Block` (attention through
``torch.nn.functional.scaled_dot_product_attention``), the patch and convolutional stems, and
the luma step of greyscale models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.data.transforms import LUMA_RGB


# ----------------------------------------------------------------------------- building blocks
def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embedding (MAE's). Returns ``[1, (1 +) grid², dim]``.

    Half of the channels encode the row, half the column; the class token gets zeros.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # [D/4]
    coords = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]  # [G², D/4]
        return torch.cat([out.sin(), out.cos()], dim=1)  # [G², D/2]

    emb = torch.cat([encode(xx), encode(yy)], dim=1)  # [G², D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()[None]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[N, L, patch² * 3]`` in row-major patch order (MAE's layout)."""
    n, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(n, c, gh, patch, gw, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images: ``[N, grid², p² * C]`` -> ``[N, C, H, W]``.

    ``grid`` is passed, not derived from the shape, so ONNX tracing sees no Python arithmetic.
    """
    n = patches.shape[0]
    x = patches.reshape(n, grid, grid, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, grid * patch, grid * patch)


def masking_ids(
    n: int, length: int, mask_ratio: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's argsort-of-noise shuffle for ``n`` sequences of ``length`` tokens.

    Returns ``(ids_keep [N, L_keep], mask [N, L], ids_restore [N, L])`` with ``L_keep = int(L *
    (1 - mask_ratio))``; ``mask`` is 1 where a token is dropped, in original order, and
    ``ids_restore`` puts the shuffled sequence back in original order.
    """
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=device)  # [N, L]
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], mask, ids_restore


def random_masking(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample (see :func:`masking_ids`).

    Args:
        tokens: ``[N, L, D]`` patch tokens (no class token).
        mask_ratio: fraction of the L tokens to drop.

    Returns:
        ``(kept [N, L_keep, D], mask [N, L], ids_restore [N, L])``.
    """
    n, length, dim = tokens.shape
    ids_keep, mask, ids_restore = masking_ids(n, length, mask_ratio, tokens.device)
    kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, dim))  # [N, L_keep, D]
    return kept, mask, ids_restore


class Attention(nn.Module):
    """Multi-head self-attention on SDPA (fused kernels where the backend has them)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, L, D/heads]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``[N, 3, H, W]`` -> ``[N, L, D]``."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """Overlapping 3x3 stride-2 convolutions down to the patch grid, then a 1x1 projection:
    ``[N, 3, H, W]`` -> ``[N, L, D]`` with the same L as :class:`PatchEmbed` of ``patch_size``.

    A ViT trained from scratch on tens of thousands of small faces learns slowly from a single
    linear patch projection; early convolutions supply the local bias it lacks (on FER2013 at
    64 px: 45 % against 27 % validation accuracy after 3 epochs, docs/pfvit.md).
    """

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3, convs_per_stage: int = 1) -> None:
        super().__init__()
        steps = patch_size.bit_length() - 1
        if patch_size != 2**steps or steps < 1:
            raise ValueError(f"a convolutional stem needs a power-of-two patch size, got {patch_size}")
        widths = [max(16, dim >> (steps - i)) for i in range(1, steps + 1)]  # e.g. 32, 64, 128 for D=128, p=8
        layers: list[nn.Module] = []
        c_in = in_chans
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
            for _ in range(convs_per_stage - 1):  # "deepconv": more local layers at each resolution
                layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
            c_in = width
        layers.append(nn.Conv2d(c_in, dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Greyscale(nn.Module):
    """Normalised RGB -> normalised grey (the ITU-R 601 luma in all three channels).

    For models trained on grey photos (FER2013): colour uploads then reach the encoder as the
    grey faces it learned from.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = ((images * self.std + self.mean) * self.luma).sum(dim=1, keepdim=True)  # [N, 1, H, W] in [0, 1]
        return (grey - self.mean) / self.std
