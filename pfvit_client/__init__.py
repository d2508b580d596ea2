"""Python client and command line (``pfvit-recognize``) for the PF-ViT service.

Needs only httpx, numpy, Pillow, tqdm and PyAV (the ``client`` extra); never the service's
own code or torch, so it installs anywhere:

    from pfvit_client import PFViTClient
    with PFViTClient("http://127.0.0.1:8000") as client:
        for result in client.recognize(["photo.jpg"], expression_map=True):
            print(result.source, [(f.label, f.probabilities[f.label]) for f in result.faces])
"""

from pfvit_client.client import AsyncPFViTClient, PFViTClient, ServiceError
from pfvit_client.types import Box, Face, ImageResult, Limits, ModelRef, Problem

__all__ = [
    "AsyncPFViTClient",
    "Box",
    "Face",
    "ImageResult",
    "Limits",
    "ModelRef",
    "PFViTClient",
    "Problem",
    "ServiceError",
]
