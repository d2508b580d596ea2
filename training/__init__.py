"""PF-ViT training: model, MAE pre-training, the adversarial separation stage, evaluation, export.

Layers, each in its own module: :mod:`training.config` (one dataclass per model and per stage),
:mod:`training.model` (the networks and their objectives), :mod:`training.engine` (one epoch
of training or evaluation, and the runs that wire them), :mod:`training.checkpoint`,
:mod:`training.distributed`, :mod:`training.evaluate`, :mod:`training.plots`,
:mod:`training.export` and :mod:`training.cli` (the command-line entry points).
Data loaders live in :mod:`training.data` and the face renderer in :mod:`training.render`.
"""
