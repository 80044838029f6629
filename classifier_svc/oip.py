"""classifier_svc's models in the Open Inference Protocol: an `OipBackend` over the classifier engine.

Each stored classification model is an OIP model of the same name (versions: the store's). One input per
request: ``IMAGE`` (BYTES ``[-1]``: N encoded images, decoded and preprocessed exactly as ``Classify``
does) or ``PIXELS`` (FP32 ``[-1, 3, S, S]``, already preprocessed; S the model's input size). Output
``PROBABILITIES`` (FP32 ``[-1, C]``, softmax), which also answers Triton's classification extension. Every
item goes through the engine's batcher with everything else, within the call's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import numpy as np
import torch

from classifier_svc.model import ClassifierEngine
from vision.errors import InvalidArgument, InvalidImage
from vision.image.batch_decode import Prepared
from vision.models.store import ModelMetadata
from vision.oip.backend import Inference, ModelSignature, ParameterValue, RegistryBackend, TensorSpec
from vision.oip.servicer import SERVICE_NAME, OipServicer, check_input
from vision.oip.tensors import BYTES, FP32, Tensor
from vision.oip_pb import grpc_service_pb2_grpc
from vision.rpc.service import ExtraService
from vision.serving.batching import Batched
from vision.serving.classifier import LoadedClassifier

IMAGE, PIXELS, PROBABILITIES = "IMAGE", "PIXELS", "PROBABILITIES"


def signature_of(meta: ModelMetadata, runtime: str) -> ModelSignature:
    size = meta.input_size
    return ModelSignature(
        platform=f"vision-{runtime}",
        inputs=(TensorSpec(IMAGE, BYTES, (-1,)), TensorSpec(PIXELS, FP32, (-1, 3, size, size))),
        outputs=(TensorSpec(PROBABILITIES, FP32, (-1, meta.num_classes)),),
    )


class ClassifierBackend(RegistryBackend):
    def __init__(self, engine: ClassifierEngine) -> None:
        super().__init__(engine.registry, engine.task)
        self.engine = engine

    def signature(self, name: str, version: str) -> ModelSignature:
        loaded: LoadedClassifier | None = self.loaded(name, version)
        if loaded is not None:
            return signature_of(loaded.version.metadata, loaded.served_as.runtime)
        stored = self.registry.store.get(name, self.resolve(name, version))
        return signature_of(stored.metadata, self.engine.runtime.runtime)

    def infer(
        self,
        name: str,
        version: str,
        tensor: Tensor,
        parameters: Mapping[str, ParameterValue],
        timeout: float,
    ) -> Inference:
        """Probabilities (N, C) for the N images or preprocessed tensors of ``tensor``."""
        start = time.perf_counter()
        engine = self.engine
        deadline = engine.deadline_after(timeout)
        if not name:
            raise InvalidArgument("name the model to use (the Open Inference Protocol has no default model)")
        name, resolved, model = engine.registry.get(name, version)
        check_input(tensor, signature_of(model.version.metadata, model.served_as.runtime).inputs)
        count, limit = tensor.shape[0], engine.batcher.max_batch_size
        if not 1 <= count <= limit:
            raise InvalidArgument(f"input {tensor.name!r}: a batch of 1 to {limit} items, got {count}")
        items: list[Prepared]
        if tensor.name == IMAGE:
            items = [engine.prepare(model, image, deadline) for image in tensor.elements]
        else:
            pixels = tensor.array
            if not np.isfinite(pixels).all():
                raise InvalidArgument(f"input {PIXELS!r} holds NaN or infinite values")
            items = list(torch.from_numpy(pixels.copy()).unbind(0))
        decode_ms = (time.perf_counter() - start) * 1000
        batched = self._run(model, items, deadline)
        engine.answered(name, resolved, decode_ms, batched[-1])
        probs = np.stack([b.value.numpy() for b in batched]).astype(np.float32, copy=False)
        return Inference(name, resolved, {PROBABILITIES: probs}, labels=tuple(model.class_names))

    def _run(
        self, model: LoadedClassifier, items: Sequence[Prepared], deadline: float | None
    ) -> list[Batched[torch.Tensor]]:
        """Each item through the batcher (sharing batches with every other caller); all or nothing: an
        image whose pixels did not decode (batched decoding) fails the request with its `InvalidImage`."""
        futures: list[Future[Batched[torch.Tensor | InvalidImage]]] = []
        try:
            for item in items:
                futures.append(self.engine.batcher.submit(model, item))
            done = [f.result(timeout=self.engine.time_left(deadline)) for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        for batched in done:
            if isinstance(batched.value, InvalidImage):
                raise batched.value
        return done  # type: ignore[return-value]  # every value is a tensor now


def oip_service(engine: ClassifierEngine) -> ExtraService:
    """The Open Inference Protocol for ``engine``'s models, to serve beside vision.v1.Classifier."""
    settings = engine.settings
    servicer = OipServicer(
        ClassifierBackend(engine),
        server_name="vision-classifier",
        classifiable=(PROBABILITIES,),
        max_elements=settings.max_message_bytes,
        default_deadline_s=settings.default_deadline_s,
        max_deadline_s=settings.max_deadline_s,
    )
    return ExtraService(
        SERVICE_NAME,
        lambda server: grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server),
        lambda grpc_server: servicer.attach(grpc_server.health),
    )
