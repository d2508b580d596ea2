"""Pure image functions shared by serving and training: decode, align, normalise.

Everything here works on numpy arrays (images as ``(H, W, 3) uint8 RGB``) and never touches
torch, ONNX Runtime or a web framework, so ``training/`` prepares faces with the very same
code the service runs on requests.
"""
