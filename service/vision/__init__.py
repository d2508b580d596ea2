"""The service's vision code, which training shares: decoding (``imaging``), the MTCNN face
detector (``mtcnn``), five-point alignment and normalisation (``align``), the one path from a
photo to aligned faces (``faces``) and expression maps (``expression_map``).

Images are numpy arrays, ``(H, W, 3) uint8`` RGB. ``align`` and ``expression_map`` are pure
functions on arrays; ``imaging`` decodes untrusted bytes with Pillow, within limits; ``mtcnn``
runs three ONNX Runtime sessions. Nothing here imports torch or a web framework, so
``training/`` prepares faces with the very code the service runs on requests.
"""
