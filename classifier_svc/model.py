"""The classifier engine, pure torch: hot-reloaded models, decoding in the caller's thread, batched
forward passes. No gRPC here."""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from classifier_svc.config import ClassifierSettings
from vision.errors import InvalidImage
from vision.image.batch_decode import BatchDecoder, Prepared
from vision.image.decode import decode_image
from vision.models.store import ModelStore, ModelVersion
from vision.serving.classifier import LoadedClassifier, load_for_serving, top_classes
from vision.serving.engine import Answered, ServingEngine
from vision.serving.runtimes import RuntimeOptions


@dataclass(frozen=True)
class Classification:
    """Top-k (class_id, label, score) highest first, and which version answered in how long."""

    classes: list[tuple[int, str, float]]
    answered: Answered


class ClassifierEngine(ServingEngine[LoadedClassifier, Prepared, torch.Tensor | InvalidImage]):
    """Decodes images in the caller's thread and batches the forward passes of concurrent callers."""

    name = "classifier"
    settings: ClassifierSettings

    def __init__(self, store: ModelStore, settings: ClassifierSettings) -> None:
        super().__init__(store, settings)
        self.runtime = RuntimeOptions.from_settings(settings, self.device)
        self.batched_decode = settings.batched_decode(self.device.type)

    def load(self, version: ModelVersion) -> LoadedClassifier:
        loaded = load_for_serving(version, self.device, self.settings.half, runtime=self.runtime)
        if self.batched_decode:
            loaded.decoder = BatchDecoder(
                loaded.preprocessing, self.device, self.image_limits, self.settings.decode_max_batch_pixels
            )
        return loaded

    def run_batch(self, key: Hashable, items: Sequence[Prepared]) -> list[torch.Tensor | InvalidImage]:
        assert isinstance(key, LoadedClassifier)
        if key.decoder is None:
            return list(key.predict(torch.stack(list(items))))  # type: ignore[arg-type]
        # Decoded on the device here; an image whose pixels did not decode gets its error in its own slot.
        decoded = key.decoder.decode(items)
        results: list[torch.Tensor | InvalidImage] = list(decoded)
        good = [i for i, item in enumerate(decoded) if not isinstance(item, InvalidImage)]
        if good:
            probs = key.predict(torch.stack([decoded[i] for i in good]))  # type: ignore[misc]
            for row, i in enumerate(good):
                results[i] = probs[row]
        return results

    def prepare(self, model: LoadedClassifier, image: bytes, deadline: float | None) -> Prepared:
        """``image`` as ``model``'s batch item, in the caller's thread (one of the ``max_concurrent_decodes``
        slots, waited for until ``deadline``): the preprocessed tensor, or with batched decoding the checked
        JPEG whose pixels the batch decodes. Raises `InvalidImage` for bad bytes."""
        prep = model.preprocessing
        with self.decode_slot(deadline):
            if model.decoder is not None:  # only the header is read here; the pixels in the batch
                return model.decoder.prepare(image)
            if self.settings.preprocess == "fast":
                return prep.fast(decode_image(image, self.image_limits, min_side=prep.resize_size))
            return prep(decode_image(image, self.image_limits))

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

        Decoding and preprocessing run in the caller's thread (at most ``max_concurrent_decodes`` at once);
        the forward pass is batched with others'. ``timeout`` (seconds) bounds the whole call.
        """
        start = time.perf_counter()
        deadline = self.deadline_after(timeout)
        name, resolved_version, model = self.registry.get(model_name, version)
        tensor = self.prepare(model, image, deadline)
        decode_ms = (time.perf_counter() - start) * 1000
        batched = self.batcher.run(model, tensor, timeout=self.time_left(deadline))
        if isinstance(batched.value, InvalidImage):
            raise batched.value
        answered = self.answered(name, resolved_version, decode_ms, batched)
        with self.telemetry.encoding():
            classes = top_classes(batched.value, top_k, model.class_names)
        return Classification(classes, answered)
