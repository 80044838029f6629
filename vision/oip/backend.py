"""What a model service supplies to serve the Open Inference Protocol: an `OipBackend` over its engine.

The protocol logic (`vision.oip.servicer`) knows nothing of classifiers or detectors; each service passes a
backend (``classifier_svc/oip.py``, ``detector_svc/oip.py``) that says what its models look like
(`ModelSignature`) and runs a request (`OipBackend.infer`) through the service's own engine, so an OIP
request is decoded, limited, batched and timed exactly like the service's own API. `RegistryBackend`
answers the questions every engine answers the same way: versions, readiness, names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vision.errors import ModelNotFound
from vision.oip.tensors import Tensor
from vision.serving.registry import ModelRegistry

ParameterValue = bool | int | float | str


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as model metadata lists it; -1 marks a dimension of variable size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """A model version's platform (``vision-<runtime>``), inputs and outputs, as model metadata lists them."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Inference:
    """One request's outputs by name (numpy arrays of their datatype), which version answered, and the
    class names of a class-score output's columns (for the classification extension)."""

    model_name: str
    model_version: str
    outputs: Mapping[str, np.ndarray]
    labels: tuple[str, ...] = ()


class OipBackend(Protocol):
    """A service's models as the Open Inference Protocol sees them. Errors are `vision.errors` kinds."""

    def versions(self, name: str) -> list[str]:
        """The stored versions of model ``name`` of this service's task, oldest first; `ModelNotFound`
        when there are none."""
        ...

    def ready(self, name: str, version: str) -> bool:
        """Whether ``name`` (``version``; empty: the one a request naming none gets) is loaded and serving."""
        ...

    def signature(self, name: str, version: str) -> ModelSignature:
        """The metadata of ``name`` at ``version`` (empty: the newest); `ModelNotFound` if there is none."""
        ...

    def infer(
        self,
        name: str,
        version: str,
        tensor: Tensor,
        parameters: Mapping[str, ParameterValue],
        timeout: float,
    ) -> Inference:
        """Run one request with its one input ``tensor`` within ``timeout`` seconds."""
        ...


class RegistryBackend:
    """Versions and readiness read from a service's `ModelRegistry` (the store it polls): a subclass adds
    `signature` and `infer`."""

    def __init__(self, registry: ModelRegistry[Any], task: str) -> None:
        self.registry = registry
        self.task = task

    def versions(self, name: str) -> list[str]:
        store = self.registry.store
        versions = store.versions(name)
        if not versions:
            store.get(name)  # raises ModelNotFound naming what the store holds
        task = store.get(name, versions[-1]).metadata.task
        if task != self.task:
            raise ModelNotFound(f"model {name!r} is a {task} model, not {self.task}")
        return versions

    def resolve(self, name: str, version: str) -> str:
        """The version a request for ``name`` at ``version`` means: the given one if stored; for an empty
        one, the served version (the pinned one, else the newest); `ModelNotFound` otherwise."""
        versions = self.versions(name)
        if not version:
            return self.registry.store.served_version(name, versions)
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; stored: {', '.join(versions)}")
        return version

    def loaded(self, name: str, version: str) -> Any | None:
        """The loaded model of ``name`` at ``version`` (resolved as `resolve` does), or None."""
        key = (name, self.resolve(name, version))
        if key in self.registry.load_errors():
            return None
        return self.registry.loaded_models().get(key)

    def ready(self, name: str, version: str) -> bool:
        try:
            return self.loaded(name, version) is not None
        except ModelNotFound:
            return False
