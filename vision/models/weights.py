"""Weights in and out of the model store (safetensors only), and models built from stored versions."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vision.errors import InvalidCheckpoint
from vision.models.architectures import build_model
from vision.models.store import WEIGHTS_FILE, ModelMetadata, ModelStore, ModelVersion


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if meta.weights_sha256 and sha256_file(path) != meta.weights_sha256:
        raise InvalidCheckpoint(f"{path} does not match the sha256 in its metadata: the store is damaged")
    model = build_model(meta.architecture, meta.num_classes, head=meta.head)
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval().to(device)
