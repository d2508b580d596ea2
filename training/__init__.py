"""PF-ViT training: model, MAE pre-training, the adversarial separation stage, evaluation, export.

Layers, each in its own module: :mod:`training.config` (one dataclass per model and per stage),
:mod:`training.model` (E, S, G, H and the MAE objective), :mod:`training.adversarial` (the
discriminator and every loss of the PF-ViT stage), :mod:`training.engine` (one epoch of each
stage and the run skeleton both share), :mod:`training.checkpoint`,
:mod:`training.distributed`, :mod:`training.evaluate`, :mod:`training.plots`,
:mod:`training.export` and :mod:`training.cli` (the command-line entry points).
Data (data specs, datasets, sampling) lives in :mod:`training.data` and the face renderer in
:mod:`training.render`.
"""
