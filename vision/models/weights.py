"""Weights in and out of the model store (safetensors only), and models built from stored versions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vision.models.architectures import build_model
from vision.models.store import (
    WEIGHTS_FILE,
    ModelMetadata,
    ModelStore,
    ModelVersion,
    sha256_file,
    verify_weights,
)

__all__ = ["load_classifier", "publish_state_dict", "sha256_file"]


def publish_state_dict(
    store: ModelStore, name: str, state_dict: Mapping[str, torch.Tensor], metadata: ModelMetadata
) -> ModelVersion:
    """Publish ``state_dict`` as the next version of ``name`` (safetensors + metadata.json, atomically)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}

    def write(tmp: Path) -> dict[str, str]:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        return {"weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}

    return store.publish(name, metadata, write)


def load_classifier(version: ModelVersion, device: torch.device | str = "cpu") -> nn.Module:
    """Build the version's architecture and load its weights (strict), in eval mode on ``device``."""
    meta = version.metadata
    path = version.weights_path
    verify_weights(version)
    model = build_model(meta.architecture, meta.num_classes, head=meta.head)
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval().to(device)
