"""The PF-ViT stage's adversarial side: the discriminator D and every loss of the stage.

:class:`PokerFaceObjective` owns them behind two methods: :meth:`~PokerFaceObjective.generator_loss`
(classification, reconstruction, cycles, the supervised poker-face term and the adversarial
terms, for E, S, G and H) and :meth:`~PokerFaceObjective.discriminator_loss` (D's loss and
its R1 penalty). D is not part of :class:`~training.model.PFViT`: inference and export never
need it, so model checkpoints and exported graphs never carry it; the run keeps it beside the
model and checkpoints it separately for resuming.

D is never frozen and unfrozen. The generator side reads D's logits through D's parameters
*detached* (:func:`torch.func.functional_call`), so gradients reach the images and through them
E, S and G, never D; D has its own optimizer and is stepped only in its own step. Under DDP the
generator-side forward (:class:`SeparationForward`) and D are two wrappers that each see only
their own parameters' gradients.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from training.config import CriticRunConfig, LossWeights, PFViTConfig, TrainConfig
from training.distributed import DistContext, wrap_ddp
from training.model import Encoder, PFViT, init_vit_weights

GENERATOR_TERMS = ("cls", "rec", "adv_poker", "adv_rec", "cyc_neutral", "cyc_residue", "poker_sup")


class Discriminator(nn.Module):
    """D: a small ViT with a real/fake logit read from its class token.

    Args:
        image_size, patch_size: input and patch side.
        dim, depth, num_heads, mlp_ratio: transformer shape.
    """

    def __init__(
        self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.vit = Encoder(image_size, patch_size, dim, depth, num_heads, mlp_ratio)
        self.head = nn.Linear(dim, 1)
        init_vit_weights(self)
        nn.init.normal_(self.vit.cls_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` normalised -> real/fake logits ``[N]``."""
        return self.head(self.vit(images)[:, 0]).squeeze(1)


def build_discriminator(config: PFViTConfig) -> Discriminator:
    """The discriminator sized for ``config`` (its ``disc_*`` fields, chosen with the model size)."""
    c = config
    return Discriminator(c.image_size, c.disc_patch_size, c.disc_dim, c.disc_depth, c.disc_heads, c.mlp_ratio)


def _item_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values [N, ...]``; with ``weight [N]`` (0/1), the mean over the items where
    it is 1 of each item's own mean (a patch critic has many logits per item)."""
    return values.mean() if weight is None else masked_mean(values.reshape(values.shape[0], -1).mean(1), weight)


def generator_adv_loss(fake_logits: torch.Tensor, gan: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Generator side: hinge uses ``-D(fake)``; non-saturating uses ``softplus(-D(fake))``.
    ``weight [N]`` counts only some items (all when None)."""
    return -_item_mean(fake_logits, weight) if gan == "hinge" else _item_mean(F.softplus(-fake_logits), weight)


def discriminator_adv_loss(
    real: torch.Tensor,
    fake: torch.Tensor,
    gan: str,
    real_weight: torch.Tensor | None = None,
    fake_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """D side: hinge ``relu(1 - D(real)) + relu(1 + D(fake))``, or the logistic loss; the
    weights ``[N]`` count only some items of each side (all when None)."""
    if gan == "hinge":
        return _item_mean(F.relu(1 - real), real_weight) + _item_mean(F.relu(1 + fake), fake_weight)
    return _item_mean(F.softplus(-real), real_weight) + _item_mean(F.softplus(fake), fake_weight)


def critic_loss(
    critic: nn.Module,
    real: torch.Tensor,
    fakes: torch.Tensor,
    cfg: CriticRunConfig,
    step: int,
    autocast=nullcontext,
    real_weight: torch.Tensor | None = None,
    fake_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's loss on real images against fakes, in one forward (one DDP forward per backward),
    plus the lazy R1 penalty every ``cfg.r1_every`` discriminator steps.

    Args:
        critic: D (or its DDP wrapper).
        real, fakes: D's inputs, ``[N, C, H, W]`` each; detached here.
        cfg: the GAN formulation and R1 settings.
        step: the discriminator step (R1 runs when it is a multiple of ``r1_every``).
        autocast: a context-manager factory for D's forward.
        real_weight, fake_weight: ``[N]`` 0/1, the items that count on each side (all when None).

    Returns ``(loss, {"d": ..., "r1": ...})`` with the terms detached.
    """
    use_r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0
    real = real.detach().requires_grad_(use_r1)
    # R1 needs a double backward, which only SDPA's math kernel provides.
    with autocast(), sdpa_kernel(SDPBackend.MATH) if use_r1 else nullcontext():
        logits = critic(torch.cat([real, fakes.detach()])).float()
    n = real.shape[0]
    loss = discriminator_adv_loss(logits[:n], logits[n:], cfg.gan, real_weight, fake_weight)
    terms = {"d": loss.detach()}
    if use_r1:
        (grad,) = torch.autograd.grad(logits[:n].sum(), real, create_graph=True)
        r1 = _item_mean(grad.pow(2).flatten(1).sum(1), real_weight)
        loss = loss + 0.5 * cfg.r1_gamma * cfg.r1_every * r1  # lazy R1, scaled to match
        terms["r1"] = r1.detach()
    return loss, terms


def weighted_total(losses: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Sum of ``weights.<name> * losses[name]`` over the terms present."""
    return sum(getattr(weights, name) * value for name, value in losses.items())


# ----------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class StageBatch:
    """One batch of the PF-ViT stage, on the device, in model space.

    ``true_poker`` holds a placeholder image where ``has_poker`` is 0 (real photographs have
    no true poker face); ``labelled`` is 0 where the label is -1.
    """

    images: torch.Tensor  # [N, 3, H, W] normalised
    targets: torch.Tensor  # [N, K] probabilities (soft or one-hot; zeros where unlabelled)
    labelled: torch.Tensor  # [N] float 0/1
    true_poker: torch.Tensor  # [N, 3, H, W] normalised
    has_poker: torch.Tensor  # [N] float 0/1


def targets_from_batch(
    batch: dict[str, torch.Tensor], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [N, K] probabilities, labelled [N] float)`` from ``soft_label`` or ``label`` (-1 = none)."""
    label = batch["label"].to(device).long()
    labelled = (label >= 0).float()
    if "soft_label" in batch:
        targets = batch["soft_label"].to(device).float()
        labelled = (targets.sum(dim=1) > 0).float()
    else:
        targets = F.one_hot(label.clamp_min(0), num_classes).float() * labelled[:, None]
    return targets, labelled


def poker_faces_from_batch(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(poker_face [N, 3, H, W] in [0, 1], has_poker_face [N] float)``.

    Items without ``has_poker_face`` but with ``poker_face`` have one; a batch with neither
    gets the images themselves as placeholders, flagged absent.
    """
    images = batch["image"].to(device)
    if "poker_face" not in batch:
        return images, torch.zeros(images.shape[0], device=device)
    poker = batch["poker_face"].to(device)
    has = batch.get("has_poker_face")
    has = torch.ones(images.shape[0], device=device) if has is None else has.to(device).float()
    return poker, has


def prepare_batch(
    batch: dict[str, torch.Tensor], model: PFViT, device: torch.device, mixup_alpha: float = 0.0
) -> StageBatch:
    """A loader batch (the dataset contract's dict) -> :class:`StageBatch`, mixed up when asked.

    Mixup mixes images, targets and true poker faces with one ``lam ~ Beta(alpha, alpha)`` and
    a shuffled copy of the batch (torch's RNG, restored on resume); an item keeps a label or a
    poker face only when both of its mixed sources had one.
    """
    images = model.normalise(batch["image"].to(device, non_blocking=True))
    targets, labelled = targets_from_batch(batch, model.config.num_classes, device)
    poker01, has_poker = poker_faces_from_batch(batch, device)
    true_poker = model.normalise(poker01)
    if mixup_alpha > 0:
        lam = float(torch.distributions.Beta(mixup_alpha, mixup_alpha).sample())
        perm = torch.randperm(images.shape[0]).to(device)
        images, targets, true_poker = (lam * t + (1 - lam) * t[perm] for t in (images, targets, true_poker))
        labelled = labelled * labelled[perm]
        has_poker = has_poker * has_poker[perm]
    return StageBatch(images, targets, labelled, true_poker, has_poker)


# ----------------------------------------------------------------------------- the generator side
@dataclass
class SeparationOutput:
    """Everything one generator-side forward produces (model space)."""

    z_p: torch.Tensor  # [N, 1 + L, D] residue
    logits: torch.Tensor  # [N, K]
    reconstruction: torch.Tensor  # [N, 3, H, W], G(z)
    poker_face: torch.Tensor  # [N, 3, H, W]
    cycle_logits: torch.Tensor  # [N, K], H of the re-encoded poker face
    cycle_z_p: torch.Tensor  # [N, 1 + L, D], its residue


class SeparationForward(nn.Module):
    """E, S, G, H in one forward (the unit DDP wraps on the generator side)."""

    def __init__(self, model: PFViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> SeparationOutput:
        m = self.model
        z = m.forward_features(images)  # [N, 1 + L, D]
        z_e, z_p = m.separate(z)
        logits, _ = m.forward_head(z_e)  # [N, K]
        reconstruction = m.generate(z)  # z_e + z_p == z
        poker = m.synthesize_poker(images, z, z_p, reconstruction)
        # The cycle reads the poker face with E, S and H frozen (parameters detached): its terms
        # teach the generator to draw a face the recogniser reads as neutral and with the same
        # residue. Left trainable, they teach the recogniser to call generated faces neutral
        # instead, a shortcut that needs no edit at all and, early on, while poker faces still
        # equal their inputs, pulls every prediction towards neutral.
        z_cycle = call_frozen(m.encoder, m.colour(poker))
        z_cycle_e, z_cycle_p = call_frozen(m.separator, z_cycle)
        cycle_logits = call_frozen(m.head, m.pool(z_cycle_e))
        return SeparationOutput(z_p, logits, reconstruction, poker, cycle_logits, z_cycle_p)


class ClassificationForward(nn.Module):
    """E, S_e, H alone (the plain-ViT side of the separation ablation; the unit DDP wraps)."""

    def __init__(self, model: PFViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        z_e, _ = m.separate(m.forward_features(images))
        logits, _ = m.forward_head(z_e)
        return logits  # [N, K]


def call_frozen(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with its parameters detached: a gradient path to the inputs only."""
    return functional_call(module, {name: p.detach() for name, p in module.named_parameters()}, args)


@dataclass
class GeneratorLoss:
    """:meth:`PokerFaceObjective.generator_loss`'s result: the weighted total, each unweighted term,
    the logits (for training accuracy) and the fakes D is trained on next."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor  # [N, K]
    fakes: torch.Tensor | None  # [2N, 3, H, W]: poker faces, then reconstructions (None without separation)


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of ``[N, C, H, W]`` images."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def poker_face_distance(poker: torch.Tensor, target: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Per-item ``[N]`` distance of generated to true poker faces: the mean error on pixels
    plus the mean error on image gradients, absolute (``norm="l1"``) or squared (``"l2"``).

    The gradient term is the structural part: a plain pixel loss is content with a blurred
    average face, while creases and lid and lip edges are exactly what an expression moves.
    """
    err = torch.abs if norm == "l1" else torch.square
    pixel = err(poker - target).flatten(1).mean(1)
    (pdx, pdy), (tdx, tdy) = image_gradients(poker), image_gradients(target)
    edges = 0.5 * (err(pdx - tdx).flatten(1).mean(1) + err(pdy - tdy).flatten(1).mean(1))
    return pixel + edges


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [N]`` over the items where ``mask [N]`` is 1 (0 when none is)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class PokerFaceObjective:
    """All losses of the PF-ViT stage, for the generator side and for D.

    Args:
        model: the PF-ViT (E, S, G, H).
        discriminator: D.
        cfg: the stage config (loss weights, GAN formulation, R1, label smoothing).
        neutral_index: index of "neutral" in the labels, or None (no neutral cycle term).
        ctx: the process context; under DDP the generator side and D get one wrapper each.
    """

    def __init__(
        self,
        model: PFViT,
        discriminator: Discriminator | None,
        cfg: TrainConfig,
        neutral_index: int | None,
        ctx: DistContext,
    ) -> None:
        if (discriminator is None) == cfg.separation:
            raise ValueError("a discriminator is needed exactly when the stage separates")
        self.model = model
        self.discriminator = discriminator
        self.weights = cfg.weights
        self.gan = cfg.gan
        self.critic_settings = cfg
        self.label_smoothing = cfg.label_smoothing
        self.poker_sup_loss = cfg.poker_sup_loss
        self.neutral_index = neutral_index
        # Without separation only E, S_e and H run: the generator stays out of the graph.
        self.separation = wrap_ddp(SeparationForward(model) if cfg.separation else ClassificationForward(model), ctx)
        self.critic = wrap_ddp(discriminator, ctx) if discriminator is not None else None

    def train(self) -> None:
        self.separation.train()
        if self.critic is not None:
            self.critic.train()

    def _classification(self, logits: torch.Tensor, batch: StageBatch) -> torch.Tensor:
        """Label-smoothed cross-entropy to the (soft) targets, over the labelled rows."""
        num_classes = logits.shape[1]
        smooth = batch.targets * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        ce = -(smooth * logits.float().log_softmax(dim=-1)).sum(dim=-1)  # [N]
        return masked_mean(ce, batch.labelled)

    def _critic_frozen(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits with D's parameters detached: a gradient path to the images only."""
        if self.discriminator is None:
            raise RuntimeError("the adversarial terms need D: this objective was built without one")
        return call_frozen(self.discriminator, images)

    def generator_loss(self, batch: StageBatch) -> GeneratorLoss:
        """Weighted loss of E, S, G and H on one batch (call inside the step's autocast); without
        separation, of E, S_e and H on the classification term alone (no fakes)."""
        if self.critic is None:
            logits = self.separation(batch.images)
            terms = {"cls": self._classification(logits, batch)}
            return GeneratorLoss(weighted_total(terms, self.weights), terms, logits, None)
        out: SeparationOutput = self.separation(batch.images)
        # Rows without a label still run through (zero weight), so every parameter is in the
        # graph on every rank; DDP needs that.
        terms = {"cls": self._classification(out.logits, batch)}
        terms["rec"] = (out.reconstruction - batch.images).abs().mean()
        terms["adv_poker"] = generator_adv_loss(self._critic_frozen(out.poker_face).float(), self.gan)
        terms["adv_rec"] = generator_adv_loss(self._critic_frozen(out.reconstruction).float(), self.gan)
        if self.neutral_index is None:
            terms["cyc_neutral"] = out.cycle_logits.sum() * 0.0
        else:
            neutral = torch.full(
                (batch.images.shape[0],), self.neutral_index, device=batch.images.device, dtype=torch.long
            )
            terms["cyc_neutral"] = F.cross_entropy(out.cycle_logits.float(), neutral)
        # Target detached: otherwise the cheapest way to match is to shrink z_p everywhere.
        terms["cyc_residue"] = (out.cycle_z_p - out.z_p.detach()).abs().mean()
        # Only items with a true poker face (rendered faces) count; real photographs have none.
        terms["poker_sup"] = masked_mean(
            poker_face_distance(out.poker_face, batch.true_poker, self.poker_sup_loss), batch.has_poker
        )
        fakes = torch.cat([out.poker_face.detach(), out.reconstruction.detach()])
        return GeneratorLoss(weighted_total(terms, self.weights), terms, out.logits, fakes)

    def discriminator_loss(
        self, real: torch.Tensor, fakes: torch.Tensor, step: int, autocast=nullcontext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on real faces against the fakes (:func:`critic_loss`).

        Returns ``(loss, {"d": ..., "r1": ...})`` with the terms detached.
        """
        if self.critic is None:
            raise RuntimeError("the discriminator step needs D: this objective was built without one")
        return critic_loss(self.critic, real, fakes, self.critic_settings, step, autocast)
