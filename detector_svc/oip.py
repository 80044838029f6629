"""detector_svc's models in the Open Inference Protocol: an `OipBackend` over the detector engine.

Each stored detection model is an OIP model of the same name (versions: the store's). Input ``IMAGE``
(BYTES ``[1]``: one encoded image); outputs ``BOXES`` (FP32 ``[-1, 4]``: x1, y1, x2, y2 in original-image
pixels), ``SCORES`` (FP32 ``[-1]``) and ``CLASSES`` (INT32 ``[-1]``), highest score first; request
parameters ``conf``, ``iou`` and ``max_det`` as ``Detect`` takes them. The request runs as a ``Detect``
call does (`DetectorEngine.detect`: same decoding, limits, batching and deadline).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from detector_svc.model import DetectorEngine
from detector_svc.options import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET, DetectOptions
from detector_svc.served import ServedDetector
from vision.errors import InvalidArgument
from vision.oip.backend import Inference, ModelSignature, ParameterValue, RegistryBackend, TensorSpec
from vision.oip.servicer import SERVICE_NAME, OipServicer, check_input
from vision.oip.tensors import BYTES, FP32, INT32, Tensor
from vision.oip_pb import grpc_service_pb2_grpc
from vision.rpc.service import ExtraService

IMAGE, BOXES, SCORES, CLASSES = "IMAGE", "BOXES", "SCORES", "CLASSES"
PARAMETERS = ("conf", "iou", "max_det")
INPUTS = (TensorSpec(IMAGE, BYTES, (1,)),)


def signature_of(runtime: str) -> ModelSignature:
    return ModelSignature(
        platform=f"vision-{runtime}",
        inputs=INPUTS,
        outputs=(
            TensorSpec(BOXES, FP32, (-1, 4)),
            TensorSpec(SCORES, FP32, (-1,)),
            TensorSpec(CLASSES, INT32, (-1,)),
        ),
    )


def _number(parameters: Mapping[str, ParameterValue], name: str, default: float) -> float:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)


def options_from(parameters: Mapping[str, ParameterValue]) -> DetectOptions:
    """``conf``, ``iou``, ``max_det`` (unset: Detect's defaults); checked by the engine."""
    max_det = parameters.get("max_det", DEFAULT_MAX_DET)
    if isinstance(max_det, bool) or not isinstance(max_det, int):
        raise InvalidArgument(f"parameter 'max_det' must be an integer, got {max_det!r}")
    return DetectOptions(
        conf=_number(parameters, "conf", DEFAULT_CONF),
        iou=_number(parameters, "iou", DEFAULT_IOU),
        max_det=max_det,
    )


class DetectorBackend(RegistryBackend):
    def __init__(self, engine: DetectorEngine) -> None:
        super().__init__(engine.registry, engine.task)
        self.engine = engine

    def signature(self, name: str, version: str) -> ModelSignature:
        loaded: ServedDetector | None = self.loaded(name, version)  # ModelNotFound for an unknown one
        return signature_of(loaded.served_as.runtime if loaded is not None else self.engine.runtime.runtime)

    def infer(
        self,
        name: str,
        version: str,
        tensor: Tensor,
        parameters: Mapping[str, ParameterValue],
        timeout: float,
    ) -> Inference:
        """The boxes of the one image of ``tensor``, as ``Detect`` finds them with the same parameters."""
        if not name:
            raise InvalidArgument("name the model to use (the Open Inference Protocol has no default model)")
        check_input(tensor, INPUTS)
        result = self.engine.detect(
            tensor.elements[0], options_from(parameters), model_name=name, version=version, timeout=timeout
        )
        boxes = result.boxes
        return Inference(
            result.answered.model_name,
            result.answered.model_version,
            {
                BOXES: np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=np.float32).reshape(-1, 4),
                SCORES: np.array([b.confidence for b in boxes], dtype=np.float32),
                CLASSES: np.array([b.class_id for b in boxes], dtype=np.int32),
            },
        )


def oip_service(engine: DetectorEngine) -> ExtraService:
    """The Open Inference Protocol for ``engine``'s models, to serve beside vision.v1.Detector."""
    settings = engine.settings
    servicer = OipServicer(
        DetectorBackend(engine),
        server_name="vision-detector",
        parameter_names=PARAMETERS,
        max_elements=settings.max_message_bytes,
        default_deadline_s=settings.default_deadline_s,
        max_deadline_s=settings.max_deadline_s,
    )
    return ExtraService(
        SERVICE_NAME,
        lambda server: grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server),
        lambda grpc_server: servicer.attach(grpc_server.health),
    )
