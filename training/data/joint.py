"""Real photos and rendered faces in one training set.

Real photos carry labels but no poker face; rendered faces carry the true poker face (the same
face with every action unit at zero), which gives the generator a supervised target. Training
on both teaches the generator what "remove the expression" means on rendered faces and the
unpaired photos carry it over to people.

Items follow the dataset contract plus ``poker_face`` and ``has_poker_face``: a real photo's
``poker_face`` is its own image (never used: ``has_poker_face`` is False). Rendered labels are
mapped onto the real set's label list by name; a rendered class the real set lacks (contempt
for FER2013) gets label -1, so it still trains the generator but not the classifier.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from training.data.transforms import to_greyscale


class JointFaces(Dataset):
    """``real`` followed by ``rendered`` (``rendered_repeat`` times); the sampler shuffles them
    together, so the share of rendered faces in a batch is their share of ``len(self)`` on average.

    Args:
        real: labelled photos (``labels``, ``targets``; items ``image``, ``label``).
        rendered: faces with ``poker_face`` (items ``image``, ``label``, ``poker_face``).
        greyscale: turn rendered faces (and their poker faces) grey, for real sets that are grey
            (FER2013): the generator's targets then live in one colour space.
        rendered_repeat: how many times each rendered face appears in one pass (the editor
            stage raises the share of faces with a true poker face this way).
        rendered_labels: rendered faces teach the classifier their class; off, they are
            unlabelled (-1) and train the generator only, so recognition learns from photos alone.

    When ``real`` has vote distributions (FERPlus's ``soft_labels``), every item carries a
    ``soft_label``: the photo's votes, a rendered face's one-hot class, or zeros (unlabelled).
    """

    def __init__(
        self,
        real: Dataset,
        rendered: Dataset,
        greyscale: bool = False,
        rendered_repeat: int = 1,
        rendered_labels: bool = True,
    ) -> None:
        if rendered_repeat < 1:
            raise ValueError(f"rendered_repeat must be at least 1, got {rendered_repeat}")
        self.real = real
        self.rendered = rendered
        self.greyscale = greyscale
        self.rendered_repeat = rendered_repeat
        self.labels: list[str] = list(real.labels)
        index = {name.lower(): k for k, name in enumerate(self.labels)}
        self.rendered_to_real = [index.get(name.lower(), -1) if rendered_labels else -1 for name in rendered.labels]
        self.soft = getattr(real, "soft_labels", None)  # (N, K) float32 or None
        rendered_targets = [int(t) for t in rendered.targets]
        self.targets: list[int] = [int(t) for t in real.targets] + [
            self.rendered_to_real[t] if t >= 0 else -1 for t in rendered_targets
        ] * rendered_repeat

    def __len__(self) -> int:
        return len(self.real) + len(self.rendered) * self.rendered_repeat

    def set_epoch(self, epoch: int) -> None:
        for part in (self.real, self.rendered):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < len(self.real):
            item = self.real[index]
            out = {
                "image": item["image"],
                "label": torch.as_tensor(int(item["label"]), dtype=torch.int64),
                "poker_face": item["image"],
                "has_poker_face": torch.tensor(False),
            }
            if self.soft is not None:
                out["soft_label"] = self.soft[index]
            return out
        if index >= len(self):
            raise IndexError(index)
        item = self.rendered[(index - len(self.real)) % len(self.rendered)]
        image, poker = item["image"], item["poker_face"]
        if self.greyscale:
            image, poker = to_greyscale(image), to_greyscale(poker)
        label = int(item["label"])
        target = self.rendered_to_real[label] if label >= 0 else -1
        out = {
            "image": image,
            "label": torch.tensor(target, dtype=torch.int64),
            "poker_face": poker,
            "has_poker_face": torch.tensor(True),
        }
        if self.soft is not None:
            soft = torch.zeros(self.soft.shape[1])
            if target >= 0:
                soft[target] = 1.0
            out["soft_label"] = soft
        return out
