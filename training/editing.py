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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.adversarial import StageBatch, masked_mean, poker_face_distance
from training.config import EditorConfig
from training.model import PFViT

EDITOR_TERMS = ("poker_sup", "cyc_neutral", "sparsity")


@dataclass
class EditorLoss:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


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
        if self.neutral_index is None:
            terms["cyc_neutral"] = poker.sum() * 0.0
        else:
            logits = m(poker)  # frozen recogniser; the gradient reaches the poker face only
            neutral = torch.full((poker.shape[0],), self.neutral_index, device=poker.device, dtype=torch.long)
            terms["cyc_neutral"] = masked_mean(F.cross_entropy(logits.float(), neutral, reduction="none"), photo)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return EditorLoss(total, terms)
