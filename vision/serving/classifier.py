"""Classification models in memory, ready to serve: shared by classifier_svc and explain_svc."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vision.image.preprocess import Preprocessing
from vision.models.store import ModelVersion
from vision.models.weights import load_classifier


@dataclass(eq=False)
class LoadedClassifier:
    """A stored version in memory, ready for batched inference on ``device``."""

    version: ModelVersion
    module: nn.Module
    preprocessing: Preprocessing
    device: torch.device
    dtype: torch.dtype

    @property
    def class_names(self) -> list[str]:
        return self.version.metadata.class_names

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities, float32 on the CPU, shape (N, num_classes), for a (N, 3, H, W) batch."""
        x = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.to(dtype=self.dtype, memory_format=torch.channels_last)
        return torch.softmax(self.module(x).float(), dim=1).cpu()


def load_for_serving(
    version: ModelVersion, device: torch.device, half: bool = True, warmup_batch: int = 1
) -> LoadedClassifier:
    """Load and warm up ``version``: first-call allocations and kernel choices happen here, not in calls."""
    meta = version.metadata
    module = load_classifier(version, device).requires_grad_(False)  # no parameter ever needs a gradient
    dtype = torch.float32
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if half:
            module, dtype = module.half(), torch.float16
    prep = Preprocessing(meta.resize_size, meta.input_size, tuple(meta.mean), tuple(meta.std))
    loaded = LoadedClassifier(version, module, prep, device, dtype)
    loaded.predict(torch.zeros(warmup_batch, 3, meta.input_size, meta.input_size))
    return loaded


def top_classes(probs: torch.Tensor, k: int, names: list[str]) -> list[tuple[int, str, float]]:
    """The ``k`` best (class_id, label, probability) of a 1-D ``probs``, highest first; ``k`` is clamped."""
    scores, indices = torch.topk(probs, min(k, probs.numel()))
    return [(int(i), names[int(i)], float(s)) for s, i in zip(scores, indices, strict=True)]
