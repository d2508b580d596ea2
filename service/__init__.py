"""PF-ViT serving: face detection, alignment, emotion recognition and poker-face generation
on ONNX Runtime.

Importing this package is cheap and pulls in neither torch nor ONNX Runtime: the pure
preprocessing modules under ``service.vision`` and ``service.card`` are shared with
``training/``, which imports them to prepare faces exactly as the service does.
"""

__version__ = "0.1.0"
