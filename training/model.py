"""PF-ViT networks: encoder E, separator S, generator G and head H (what inference and export
need). The discriminator D and the adversarial stage's losses live in :mod:`training.adversarial`.

All parts are plain ViTs built from the same pre-norm :class:`Block` (attention through
``torch.nn.functional.scaled_dot_product_attention``). Tensors are ``(N, 3, H, W)`` float32
RGB images already normalised with the config's mean/std (:meth:`PFViT.normalise`), and
``[N, 1 + L, D]`` token sequences whose first token is the class token.

:class:`MAEObjective` is an ``nn.Module`` wrapper so that DistributedDataParallel wraps exactly
the computation that the pre-training optimizer updates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from training.blocks import (
    Block,
    ConvStem,
    Greyscale,
    PatchEmbed,
    masking_ids,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)
from training.config import PFViTConfig
from training.data.transforms import LUMA_RGB


# ----------------------------------------------------------------------------- the four parts
class Encoder(nn.Module):
    """E: vanilla ViT with a class token and fixed 2D sin-cos positions.

    Args:
        image_size, patch_size: input and patch side in pixels.
        dim, depth, num_heads, mlp_ratio: transformer shape.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        stem: str = "patch",
    ) -> None:
        super().__init__()
        grid = image_size // patch_size
        self.grid, self.patch_size = grid, patch_size
        if stem == "patch":
            self.patch_embed: nn.Module = PatchEmbed(patch_size, dim)
        else:
            self.patch_embed = ConvStem(patch_size, dim, convs_per_stage=2 if stem == "deepconv" else 1)
        # Overlapping convolutions would see the pixels of masked neighbours: MAE then hides
        # the masked patches in the image itself before the stem.
        self.mask_pixels = stem != "patch"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed, not learned: MAE's choice, and it keeps masked and unmasked runs consistent.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _run(self, patches: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1)  # [N, 1 + L', D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` normalised -> ``z [N, 1 + L, D]``."""
        return self._run(self.patch_embed(images) + self.pos_embed[:, 1:])

    def forward_masked(
        self, images: torch.Tensor, mask_ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible patches. Returns ``(z [N, 1 + L_keep, D], mask [N, L], ids_restore [N, L])``."""
        n, length = images.shape[0], self.grid * self.grid
        ids_keep, mask, ids_restore = masking_ids(n, length, mask_ratio, images.device)
        if self.mask_pixels:
            hidden = (
                mask.view(n, 1, self.grid, self.grid)
                .repeat_interleave(self.patch_size, 2)
                .repeat_interleave(self.patch_size, 3)
            )
            images = images * (1.0 - hidden)  # [N, 3, H, W], masked patches zeroed (the mean in model space)
        patches = self.patch_embed(images) + self.pos_embed[:, 1:]  # [N, L, D]
        kept = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))  # [N, L_keep, D]
        return self._run(kept), mask, ids_restore


class OrthogonalSeparator(nn.Module):
    """S: a learned orthogonal projector onto a k-dimensional emotional subspace.

    ``W`` (k×D) keeps orthonormal rows through ``torch.nn.utils.parametrizations.orthogonal``
    (U = Wᵀ). ``z_e = z Wᵀ W`` and ``z_p = z - z_e``, so ``z_e · z_p = 0`` for every token by
    construction, with no extra loss. The neutral emotional component ``e_n`` (one vector per
    token position) is stored as coordinates in the subspace, so it never leaves it.

    Args:
        dim: token width D.
        emotion_dim: subspace rank k.
        num_tokens: tokens per sequence (1 + L), for the per-position neutral component.
    """

    def __init__(self, dim: int, emotion_dim: int, num_tokens: int) -> None:
        super().__init__()
        # matrix_exp, not the default Householder map for a non-square weight: under Adam-type
        # updates the Householder map collapses W to zeros after one step (tested), which
        # silently empties z_e and leaves the classifier at chance.
        self.basis = orthogonal(nn.Linear(dim, emotion_dim, bias=False), orthogonal_map="matrix_exp")
        self.neutral_coords = nn.Parameter(torch.zeros(1, num_tokens, emotion_dim))

    @property
    def projector_basis(self) -> torch.Tensor:
        """``W [k, D]`` with orthonormal rows."""
        return self.basis.weight

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [N, T, D]`` -> ``(z_e, z_p)``, both ``[N, T, D]``, with ``z_e + z_p = z``."""
        w = self.projector_basis  # [k, D]
        z_e = (z @ w.t()) @ w  # [N, T, D], inside the subspace
        return z_e, z - z_e

    def neutral(self) -> torch.Tensor:
        """``e_n [1, T, D]``: the learned neutral component, inside the emotional subspace."""
        return self.neutral_coords @ self.projector_basis


class Generator(nn.Module):
    """G: MAE-style transformer decoder that predicts patch pixels (normalised RGB).

    Args:
        num_patches: L.
        patch_size: pixels per patch side.
        in_dim: token width of the encoder D.
        dim, depth, num_heads, mlp_ratio: decoder shape.
    """

    def __init__(
        self, num_patches: int, patch_size: int, in_dim: int, dim: int, depth: int, num_heads: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, int(math.isqrt(num_patches))), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed  # [N, 1 + L, Dd]
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # [N, L, p² * 3], class token dropped

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Full token set ``z [N, 1 + L, D]`` -> patch pixels ``[N, L, p² * 3]``."""
        return self._decode(self.embed(z))

    def forward_masked(self, z: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible tokens ``[N, 1 + L_keep, D]`` plus mask tokens in original order -> ``[N, L, p² * 3]``."""
        x = self.embed(z)  # [N, 1 + L_keep, Dd]
        n, length = ids_restore.shape
        fill = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], fill], dim=1)  # [N, L, Dd], shuffled order
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        return self._decode(torch.cat([x[:, :1], patches], dim=1))


class ExpressionEditor(nn.Module):
    """Ed: a small convolutional U-Net that draws the poker face's change at full resolution.

    It reads the face and, per token, the emotional shift ``e_n - z_e`` that the poker face
    makes (spread over the image by bilinear upsampling of the token grid), and returns the
    change to add to the face. The transformer generator G decodes whole patches from tokens,
    so its change has no place finer than a patch; the editor sees the pixels, so it can move
    exactly the lips, lids and brows that carry the expression and leave the rest alone. Its
    output layer starts at zero: a fresh editor changes nothing.

    Args:
        grid: token grid side (``image_size // patch_size``).
        token_dim: encoder width D.
        channels: channels read and changed (1 for a greyscale model, whose change is a luma
            change, else 3).
        width: channels of the first level; the two lower levels have 2x and 3x as many.
        cond_dim: channels the per-token shift is projected to.
    """

    def __init__(self, grid: int, token_dim: int, channels: int, width: int, cond_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.channels = channels
        w1, w2, w3 = width, 2 * width, 3 * width
        self.cond = nn.Linear(token_dim, cond_dim)
        self.down1 = _conv_pair(channels + cond_dim, w1, w1)  # full resolution
        self.down2 = _conv_pair(w1, w2, w2, stride=2)  # 1/2
        self.down3 = _conv_pair(w2, w3, w3, stride=2)  # 1/4, before the shift joins again
        self.bottom = _conv_pair(w3 + cond_dim, w3, w3)
        self.up2 = _conv_pair(w3 + w2, w2, w2)
        self.up1 = _conv_pair(w2 + w1, w1, w1)
        self.out = nn.Conv2d(w1, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, faces: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``faces [N, C, H, W]`` (model space), ``shift [N, L, D]`` -> change ``[N, C, H, W]``
        in [0, 1] pixel units."""
        n = shift.shape[0]
        cond = self.cond(shift).transpose(1, 2).reshape(n, -1, self.grid, self.grid)  # [N, c, g, g]
        x1 = self.down1(torch.cat([faces, _resize(cond, faces.shape[-1])], dim=1))  # [N, w1, H, W]
        x2 = self.down2(x1)  # [N, w2, H/2, W/2]
        x3 = self.down3(x2)  # [N, w3, H/4, W/4]
        x3 = self.bottom(torch.cat([x3, _resize(cond, x3.shape[-1])], dim=1))
        y2 = self.up2(torch.cat([_resize(x3, x2.shape[-1]), x2], dim=1))
        y1 = self.up1(torch.cat([_resize(y2, x1.shape[-1]), x1], dim=1))
        return self.out(y1)


def _conv_pair(c_in: int, c_mid: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with GELU, the first with ``stride``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_mid, 3, stride=stride, padding=1), nn.GELU(), nn.Conv2d(c_mid, c_out, 3, padding=1), nn.GELU()
    )


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` to ``side x side``."""
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


class ClassifierHead(nn.Module):
    """H: LayerNorm + linear on the pooled emotional component (identity without classes, as
    in a pre-training model, whose head the PF-ViT stage replaces)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6) if num_classes else nn.Identity()
        self.fc = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> logits ``[N, K]``."""
        return self.fc(self.norm(embedding))


# ----------------------------------------------------------------------------- the whole model
class PFViT(nn.Module):
    """Poker Face Vision Transformer.

    Named stages: :meth:`forward_features` (E), :meth:`separate` (S), :meth:`pool`,
    :meth:`forward_head` (H), :meth:`generate` (G). ``forward`` is recognition only
    (E + S_e + H); the generator is never touched there.

    Args:
        config: the architecture; the model's only constructor argument.
    """

    def __init__(self, config: PFViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.colour = Greyscale(c.mean, c.std) if c.greyscale else nn.Identity()
        self.encoder = Encoder(c.image_size, c.patch_size, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio, c.stem)
        self.separator = OrthogonalSeparator(c.embed_dim, c.emotion_dim, c.num_patches + 1)
        self.generator = Generator(
            c.num_patches, c.patch_size, c.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio
        )
        self.head = ClassifierHead(c.embed_dim, c.num_classes)
        # Only "editor" models have one; the others keep the attribute, as None.
        self.editor = (
            ExpressionEditor(
                c.image_size // c.patch_size, c.embed_dim, 1 if c.greyscale else 3, c.editor_width, c.editor_cond_dim
            )
            if c.poker_mode == "editor"
            else None
        )
        self.register_buffer("pixel_mean", torch.tensor(c.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("colour_luma", torch.tensor(LUMA_RGB).view(1, 3, 1, 1), persistent=False)
        init_vit_weights(self)
        for param in (self.encoder.cls_token, self.generator.mask_token, self.separator.neutral_coords):
            nn.init.normal_(param, std=0.02)
        if isinstance(self.head.fc, nn.Linear):
            # A small head start, so the first logits are near uniform (timm's head_init_scale idea).
            with torch.no_grad():
                self.head.fc.weight.mul_(0.1)

    # ---- pixels
    def normalise(self, images01: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` RGB in [0, 1] -> model input."""
        return (images01 - self.pixel_mean) / self.pixel_std

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> RGB in [0, 1] (clamped)."""
        return (images * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)

    # ---- named stages
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """E: ``[N, 3, H, W]`` -> ``z [N, 1 + L, D]`` (grey first when ``config.greyscale``)."""
        return self.encoder(self.colour(images))

    def separate(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S: ``z`` -> ``(z_e, z_p)``, each ``[N, 1 + L, D]``."""
        return self.separator(z)

    @staticmethod
    def pool(z_e: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens of z_e (MAE fine-tuning's global pool): ``[N, D]``."""
        return z_e[:, 1:].mean(dim=1)

    def forward_head(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H: ``z_e`` -> ``(logits [N, K], embedding [N, D])``."""
        embedding = self.pool(z_e)
        return self.head(embedding), embedding

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G: tokens ``[N, 1 + L, D]`` -> image ``[N, 3, H, W]`` in model (normalised) space."""
        return unpatchify(self.generator(z), self.config.patch_size, self.config.image_size // self.config.patch_size)

    def poker_tokens(self, z_p: torch.Tensor) -> torch.Tensor:
        """``z_p + e_n``: the residue with the neutral emotional component put back."""
        return z_p + self.separator.neutral()

    def synthesize_poker(
        self, images: torch.Tensor, z: torch.Tensor, z_p: torch.Tensor, reconstruction: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The poker face in model space, ``[N, 3, H, W]``, per ``config.poker_mode``.

        Args:
            images: the normalised input faces (used by "edit" and "editor" modes).
            z, z_p: their tokens and residue.
            reconstruction: ``G(z)`` when the caller already has it ("edit" mode needs it).
        """
        if self.editor is not None:
            # The shift each token makes to reach the neutral emotional component: e_n - z_e.
            shift = (self.separator.neutral() - (z - z_p))[:, 1:]  # [N, L, D]
            faces = self.colour(images)[:, : self.editor.channels]  # grey models: the luma, once
            return images + self.editor(faces, shift) / self.pixel_std  # a grey change lands in every channel
        poker = self.generate(self.poker_tokens(z_p))  # G(z_p + e_n)
        if self.config.poker_mode == "edit":
            # Keep what G cannot redraw: apply only G's own neutral-minus-faithful change.
            rec = self.generate(z) if reconstruction is None else reconstruction
            change = poker - rec  # model space: per-channel normalised
            if self.config.poker_luma:
                luma = (change * self.pixel_std * self.colour_luma).sum(
                    dim=1, keepdim=True
                )  # [N, 1, H, W] in [0, 1] units
                change = luma / self.pixel_std
            poker = images + change
        return poker

    # ---- inference entry points
    def recognise(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E + S_e + H: normalised images -> ``(logits [N, K], embedding [N, D])``."""
        z_e, _ = self.separate(self.forward_features(images))
        return self.forward_head(z_e)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Recognition logits ``[N, K]`` for normalised images."""
        return self.recognise(images)[0]

    def poker_face(self, images: torch.Tensor) -> torch.Tensor:
        """E + S_p + G: normalised images -> poker faces ``[N, 3, H, W]`` RGB in [0, 1]."""
        z = self.forward_features(images)
        _, z_p = self.separate(z)
        return self.denormalise(self.synthesize_poker(images, z, z_p))

    # ---- MAE
    def forward_pretrain(
        self, images: torch.Tensor, mask_ratio: float = 0.75, norm_pix_loss: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE step: encode the visible patches, decode all, MSE on the masked ones.

        Returns ``(loss, pred [N, L, p² * 3], mask [N, L])``.
        """
        images = self.colour(images)
        z, mask, ids_restore = self.encoder.forward_masked(images, mask_ratio)
        pred = self.generator.forward_masked(z, ids_restore)
        target = patchify(images, self.config.patch_size)  # [N, L, p² * 3]
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)  # [N, L]
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        return loss, pred, mask

    # ---- optimisation
    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups of E, S, G and H (trainable parameters only); see :func:`optim_groups`."""
        return optim_groups(self, weight_decay)

    def num_params(self, part: str = "recognition") -> int:
        """Parameters of "recognition" (E + S + H), "generator", "editor" (0 without one) or "all"."""
        parts = {
            "recognition": [self.encoder, self.separator, self.head],
            "generator": [self.generator],
            "editor": [self.editor] if self.editor is not None else [],
            "all": [self],
        }[part]
        return sum(p.numel() for m in parts for p in m.parameters())


def init_vit_weights(root: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers (and patch embeddings), zero biases."""
    for module in root.modules():
        if isinstance(module, nn.Linear) and not torch.nn.utils.parametrize.is_parametrized(module):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, PatchEmbed):
            # As a linear layer on the flattened patch (MAE), not as a conv.
            nn.init.xavier_uniform_(module.proj.weight.view(module.proj.weight.shape[0], -1))
            nn.init.zeros_(module.proj.bias)


def optim_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters: decay, then no decay.

    Norm weights, biases, tokens, the neutral coordinates and the orthogonal
    parametrisation's free matrix get no weight decay: decaying them shrinks things that
    carry no capacity (or, for the orthogonal map, bends its trivialisation).
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith(("cls_token", "mask_token", "neutral_coords")) or "parametrizations" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# ----------------------------------------------------------------------------- objectives
class MAEObjective(nn.Module):
    """Wraps :meth:`PFViT.forward_pretrain` so DDP sees one forward per step."""

    def __init__(self, model: PFViT, mask_ratio: float, norm_pix_loss: bool) -> None:
        super().__init__()
        self.model = model
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.forward_pretrain(images, self.mask_ratio, self.norm_pix_loss)
