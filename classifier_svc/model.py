"""The classifier engine, pure torch: hot-reloaded models, decoding in the caller's thread, batched
forward passes. No gRPC here."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vision.image.decode import ImageLimits, decode_image
from vision.models.devices import resolve_device
from vision.models.store import ModelStore
from vision.serving.classifier import LoadedClassifier, load_for_serving, top_classes
from vision.serving.engine import ServingEngine
from vision.serving.registry import ModelRegistry


@dataclass(frozen=True)
class Classification:
    """Top-k (class_id, label, score) highest first, the version that answered, and where time went (ms)."""

    classes: list[tuple[int, str, float]]
    model_name: str
    model_version: str
    decode_ms: float
    queue_ms: float
    inference_ms: float
    batch_size: int


class ClassifierEngine(ServingEngine[LoadedClassifier, torch.Tensor, torch.Tensor]):
    """Decodes images in the caller's thread and batches the forward passes of concurrent callers."""

    def __init__(
        self,
        store: ModelStore,
        *,
        device: str = "auto",
        half: bool = True,
        default_model: str = "",
        max_batch_size: int = 16,
        max_batch_delay_ms: float = 4.0,
        max_queue: int = 256,
        poll_interval_s: float = 2.0,
        image_limits: ImageLimits | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.image_limits = image_limits or ImageLimits()
        registry: ModelRegistry[LoadedClassifier] = ModelRegistry(
            store,
            lambda v: load_for_serving(v, self.device, half),
            default_model=default_model,
            poll_interval_s=poll_interval_s,
        )
        super().__init__(
            registry,
            self._run_batch,
            max_batch_size=max_batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
            max_queue=max_queue,
            name="classifier-batcher",
        )

    @staticmethod
    def _run_batch(model: LoadedClassifier, items: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(model.predict(torch.stack(list(items))))

    def classify(
        self,
        image: bytes,
        *,
        model_name: str = "",
        version: str = "",
        top_k: int = 5,
        timeout: float | None = None,
    ) -> Classification:
        """Top-``top_k`` classes of ``image`` (clamped to the model's class count).

        Decoding and preprocessing run in the caller's thread; the forward pass is batched with others'.
        """
        start = time.perf_counter()
        name, resolved_version, model = self.registry.get(model_name, version)
        tensor = model.preprocessing(decode_image(image, self.image_limits))
        decode_ms = (time.perf_counter() - start) * 1000
        batched = self.batcher.run(model, tensor, timeout=timeout)
        return Classification(
            top_classes(batched.value, top_k, model.class_names),
            name,
            resolved_version,
            decode_ms,
            batched.queue_ms,
            batched.inference_ms,
            batched.batch_size,
        )
