"""Choosing the torch device: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' picks cuda:0 when available; otherwise the named device. Fails fast for absent CUDA."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device
