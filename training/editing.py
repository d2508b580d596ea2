"""The editor stage's losses: what teaches :class:`~training.model.ExpressionEditor` to remove
an expression.

The PF-ViT around the editor is finished and frozen; only the editor learns. Three terms:

- ``poker_sup``: on faces with a true poker face (rendered faces), the squared distance of the
  poker face to it, on pixels and on image gradients. Squared, because the true change is zero
  almost everywhere and L1's optimum under uncertainty is then no change at all (docs/pfvit.md).
- ``cyc_neutral``: on photographs (no true poker face), the frozen recogniser's cross-entropy
  to "neutral" on the poker face: the edit must carry over from drawn faces to people.
- ``sparsity``: on the same photographs, the mean absolute change. A change spread thin over
  the whole face is the cheapest way to move any classifier, and it is noise, not an edit.
- ``identity`` (off at weight 0): on the same photographs, the distance of the frozen model's
  residue z_p of the poker face to that of the input: keep the person.
- geometry (``poker_translate``, ``poker_scale``): the rendered faces are drawn on the
  alignment template, so their mouths and brows sit at one place; each one and its true poker
  face get the same random shift and zoom (:func:`jitter_poker_pairs`), the photographs have
  theirs from the data's augmentation, and no term can be met by painting at fixed positions.
- ``adv`` (off at weight 0, computed by :class:`EditorCritic`): a critic's verdict (per patch or
  per face) on the poker faces of expressive photographs, the critic having learned real neutral
  photographs against them. The frozen recogniser can be moved by patterns no person shows; the
  critic asks for what real neutral faces look like.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from training.adversarial import (
    StageBatch,
    call_frozen,
    critic_loss,
    generator_adv_loss,
    masked_mean,
    poker_face_distance,
)
from training.config import EditorConfig
from training.distributed import DistContext, wrap_ddp
from training.model import PFViT

EDITOR_TERMS = ("poker_sup", "cyc_neutral", "sparsity", "identity")


@dataclass
class EditorLoss:
    """:class:`EditorObjective`'s result: the weighted total, each unweighted term and the
    poker faces (model space, ``[N, 3, H, W]``) the critic reads."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    poker: torch.Tensor


class EditorObjective(nn.Module):
    """The editor stage's weighted loss on one batch (the unit DDP wraps).

    Args:
        model: an "editor" PF-ViT whose parts other than the editor are frozen.
        cfg: the stage config (its weights).
        neutral_index: index of "neutral" in the labels, or None (no cycle term).
    """

    def __init__(self, model: PFViT, cfg: EditorConfig, neutral_index: int | None) -> None:
        super().__init__()
        if model.editor is None:
            raise ValueError("the editor stage needs poker_mode='editor'")
        self.model = model
        self.weights = {name: float(getattr(cfg, name)) for name in EDITOR_TERMS}
        self.neutral_index = neutral_index

    def forward(self, batch: StageBatch) -> EditorLoss:
        m = self.model
        with torch.no_grad():  # the frozen encoder's view of the input needs no gradient
            z = m.forward_features(batch.images)
            _, z_p = m.separate(z)
        poker = m.synthesize_poker(batch.images, z, z_p)  # [N, 3, H, W] model space
        photo = 1.0 - batch.has_poker
        terms = {"poker_sup": masked_mean(poker_face_distance(poker, batch.true_poker, "l2"), batch.has_poker)}
        change01 = ((poker - batch.images) * m.pixel_std).abs().flatten(1).mean(1)  # [N]
        terms["sparsity"] = masked_mean(change01, photo)
        reads_poker = self.neutral_index is not None or self.weights["identity"] > 0
        logits, residue = self._reading(poker) if reads_poker else (None, None)
        if self.neutral_index is None:
            terms["cyc_neutral"] = poker.sum() * 0.0
        else:
            neutral = torch.full((poker.shape[0],), self.neutral_index, device=poker.device, dtype=torch.long)
            terms["cyc_neutral"] = masked_mean(F.cross_entropy(logits.float(), neutral, reduction="none"), photo)
        if self.weights["identity"] > 0:  # off, the term is not computed (nor logged)
            terms["identity"] = masked_mean((residue - z_p).abs().flatten(1).mean(1), photo)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return EditorLoss(total, terms, poker)

    def _reading(self, poker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's ``(logits [N, K], residue z_p [N, 1 + L, D])`` of the poker faces;
        the gradient reaches the poker faces only."""
        m = self.model
        z_e, z_p = m.separate(m.forward_features(poker))
        return m.forward_head(z_e)[0], z_p


def jitter_poker_pairs(batch: StageBatch, translate: float, scale: tuple[float, float]) -> StageBatch:
    """The batch with every item that has a true poker face moved by one random affine, the
    same for the face and its poker face: a shift up to ``translate`` of the side and a zoom in
    ``scale``, about the centre (uncovered pixels repeat the border). Other items stay as they
    are. Draws from the global RNG, which the stage's checkpoint keeps, so a resumed run draws
    what the uninterrupted one does."""
    if translate <= 0 and scale == (1.0, 1.0):
        return batch
    n, device = batch.images.shape[0], batch.images.device
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n)
    t = (2 * torch.rand(n, 2) - 1) * translate * 2  # grid units: the side spans 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = -t / s[:, None]  # affine_grid maps output to input: in = (out - t) / s
    grid = F.affine_grid(theta.to(device, batch.images.dtype), list(batch.images.shape), align_corners=False)
    moved = (batch.has_poker > 0.5)[:, None, None, None]

    def move(x: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.where(moved, out, x)

    return replace(batch, images=move(batch.images), true_poker=move(batch.true_poker))


# ----------------------------------------------------------------------------- the critic
class PatchDiscriminator(nn.Module):
    """The editor stage's critic: a small convolutional net with one real/fake logit per
    overlapping patch of the face (a PatchGAN), for any input size.

    Two stride-2 4x4 convolutions, then two 3x3 ones, LeakyReLU between, no normalisation (R1
    and DDP need none, and batch statistics would let real and fake batches tell themselves
    apart). A patch critic judges the local texture of lips, lids and brows, not the face's
    layout, so it cannot ask for a mouth at one place.

    With ``pool``, the patches' logits are averaged into one per face before any loss, so the
    verdict is the face's: the few patches where an edit shows (lips, brows) are not each
    weighed against the many of hair, cheek and background that no edit touches. docs/pfvit.md
    gives what this did in the probes and the full runs (it made the critic count for more, not
    the poker faces pass).

    Args:
        channels: channels read (1 for a grey model: the luma, as the editor reads it).
        width: channels of the first convolution; the next two have 2x and 4x as many.
        pool: one logit per face (the mean over patches) instead of one per patch.
    """

    def __init__(self, channels: int, width: int, pool: bool = False) -> None:
        super().__init__()
        self.pool = pool
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, padding=1),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` model space -> patch logits ``[N, P]`` (``P = (H/4) * (W/4)``), or
        ``[N, 1]`` with ``pool``."""
        logits = self.layers(faces).flatten(1)
        return logits.mean(dim=1, keepdim=True) if self.pool else logits


@dataclass(frozen=True)
class CriticSets:
    """Which items of a batch the critic reads, each ``[N]`` float 0/1."""

    real: torch.Tensor  # photographs whose class is neutral: their images are the real set
    fake: torch.Tensor  # photographs of any other class: their poker faces are the fakes


def critic_sets(batch: StageBatch, neutral_index: int) -> CriticSets:
    """Real and fake items of one batch.

    Only photographs count (no true poker face: rendered faces are neither), and only labelled
    ones. An item's class is its target's largest entry: the label for hard labels, the
    majority class for FERPlus's votes.
    """
    photo = (batch.has_poker < 0.5) & (batch.labelled > 0)
    neutral = batch.targets.argmax(dim=1) == neutral_index
    return CriticSets(real=(photo & neutral).float(), fake=(photo & ~neutral).float())


class EditorCritic:
    """The editor stage's adversarial side: the critic's loss and the editor's adversarial term.

    The critic reads faces the way the editor does (the luma alone for a grey model). The
    editor's term reads its logits through detached parameters (as the PF-ViT stage does), so
    the gradient reaches the poker faces, never the critic; the critic learns in its own step,
    through its own DDP wrapper.

    Args:
        model: the "editor" PF-ViT.
        discriminator: the critic (:class:`PatchDiscriminator`).
        cfg: the stage config (GAN formulation, R1).
        neutral_index: index of "neutral" in the labels.
        ctx: the process context.
    """

    def __init__(
        self, model: PFViT, discriminator: nn.Module, cfg: EditorConfig, neutral_index: int, ctx: DistContext
    ) -> None:
        self.model = model
        self.discriminator = discriminator
        self.cfg = cfg
        self.neutral_index = neutral_index
        self.critic = wrap_ddp(discriminator, ctx)

    def train(self) -> None:
        self.critic.train()

    def view(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> what the critic reads, ``[N, C, H, W]``."""
        return self.model.colour(images)[:, : self.model.editor.channels]

    def generator_loss(self, poker: torch.Tensor, sets: CriticSets) -> torch.Tensor:
        """The editor's adversarial term on the poker faces of the fake set."""
        return generator_adv_loss(call_frozen(self.discriminator, self.view(poker)).float(), self.cfg.gan, sets.fake)

    def discriminator_loss(
        self, images: torch.Tensor, poker: torch.Tensor, sets: CriticSets, step: int, autocast=nullcontext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's loss: the batch's images where ``sets.real`` against its poker faces where
        ``sets.fake`` (detached), with lazy R1 on the real ones (:func:`critic_loss`)."""
        return critic_loss(
            self.critic, self.view(images), self.view(poker), self.cfg, step, autocast, sets.real, sets.fake
        )


class FaceDiscriminator(nn.Module):
    """The editor stage's whole-face critic: one real/fake logit per face from features that
    see all of it, as the two-sample test's classifier does.

    A 3x3 convolution, three 4x4 stride-2 ones (the side halves three times: 6x6 at 48 px, each
    unit then seeing more than the face), a 3x3 one, LeakyReLU 0.2 between, no normalisation
    (R1 and DDP need none, and batch statistics would let real and fake batches tell themselves
    apart); the mean over positions, then one linear logit. A patch critic asks only whether
    each piece of texture could be real; this one can also ask whether the mouth, the brows and
    the cheeks belong to one neutral face.

    Args:
        channels: channels read (1 for a grey model).
        width: channels of the first convolution; the next ones have 2x, 4x and 8x as many.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        w = width
        self.layers = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 8 * w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(8 * w, 8 * w, 3, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.fc = nn.Linear(8 * w, 1)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` model space -> logits ``[N, 1]``."""
        return self.fc(self.layers(faces).mean(dim=(2, 3)))


def build_critic(model: PFViT, cfg: EditorConfig) -> nn.Module:
    """The critic for ``model``'s editor (``cfg.d_arch``: "patch" or "face"); it reads as many
    channels as the editor changes."""
    channels = model.editor.channels
    if cfg.d_arch == "face":
        return FaceDiscriminator(channels, cfg.d_width)
    return PatchDiscriminator(channels, cfg.d_width, cfg.d_pool)
