"""`--local`: classification in this process, straight from the model store, when no service runs. The same
steps as classifier_svc with its defaults (torch runtime, exact preprocessing): decode with the services'
limits, `Preprocessing`, softmax, top-k; one image per forward pass (no batching, hence float differences
within ~1e-6 of a batched service answer are possible)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from vision.client.results import Classification, ModelRef, ScoredClass, Timing
from vision.errors import InvalidArgument
from vision.image.decode import decode_image
from vision.models.devices import resolve_device
from vision.models.store import ModelStore
from vision.serving.classifier import LoadedClassifier, load_for_serving, top_classes
from vision.settings import ServiceSettings

DEFAULT_TOP_K = 5


def _model_name(store: ModelStore, model: str) -> str:
    if model:
        return model
    defaults = store.lifecycle.defaults()
    names = store.names()
    if "classification" in defaults:
        return defaults["classification"]
    if len(names) == 1:
        return names[0]
    raise InvalidArgument(
        f"--local needs --model: the store {store.root} holds {', '.join(names) or 'no models'} and no "
        "default classification model"
    )


class LocalClassifier:
    """A stored classifier loaded in this process; thread-safe (forward passes take turns)."""

    def __init__(self, store: ModelStore, model: str = "", version: str = "", device: str = "cpu") -> None:
        name = _model_name(store, model)
        stored = store.get(name, version or store.served_version(name))
        if stored.metadata.task != "classification":
            raise InvalidArgument(f"model {name!r} is a {stored.metadata.task} model, not a classifier")
        self.loaded: LoadedClassifier = load_for_serving(stored, resolve_device(device), half=False)
        self.limits = ServiceSettings().image_limits
        self.model = ModelRef(stored.name, stored.version)
        self._lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def classify(self, image: Path | bytes, *, top_k: int = 0) -> Classification:
        """As `VisionClient.classify` answers: the ``top_k`` (0: 5) best classes, highest first."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        tensor = self.loaded.preprocessing(decode_image(data, self.limits))
        with self._lock, torch.inference_mode():
            probs = self.loaded.predict(tensor.unsqueeze(0))[0]
        classes = top_classes(probs, top_k or DEFAULT_TOP_K, self.class_names)
        scored = tuple(ScoredClass(i, label, score) for i, label, score in classes)
        return Classification(scored, self.model, Timing(0.0, 0.0, 0.0, 0.0, 1))
