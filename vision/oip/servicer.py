"""inference.GRPCInferenceService (the Open Inference Protocol, KServe v2) over a service's `OipBackend`.

Served on the service's own gRPC port, beside its own API (`vision.rpc.service`), so the same message
limits, admission control, deadlines, telemetry and error mapping apply (`vision.rpc.status`: a bad input is
INVALID_ARGUMENT, an unknown model or version NOT_FOUND, a full queue RESOURCE_EXHAUSTED). This module only
checks and converts: tensors in (raw or typed contents), the backend's arrays out (raw), plus Triton's
classification extension (an output requested with the ``classification`` parameter comes back as the ``k``
best classes, ``"score:index:label"``, under the same name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2

from vision.errors import InvalidArgument
from vision.oip.backend import Inference, OipBackend, ParameterValue, TensorSpec
from vision.oip.tensors import BYTES, NUMERIC, Tensor, classification, from_raw, from_values, to_raw
from vision.oip_pb import grpc_service_pb2 as pb
from vision.oip_pb import grpc_service_pb2_grpc as pb_grpc
from vision.rpc.deadline import call_timeout

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ("classification",)
CLASSIFICATION = "classification"
# Request parameters Triton's clients may send that change nothing here (sequence batching, priorities and
# Triton's own server-side timeout have no equivalent; the call's gRPC deadline bounds it).
IGNORED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)
_DATATYPE_OF = {np.dtype(dtype): name for name, (dtype, _) in NUMERIC.items()}


def server_version() -> str:
    try:
        return metadata.version("vision-mesh")
    except metadata.PackageNotFoundError:
        return "unknown"


def parameter_value(parameter: pb.InferParameter) -> ParameterValue:
    """The Python value of an InferParameter (whichever member of its oneof is set)."""
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidArgument("a parameter has no value (bool, int64, uint64, double or string)")
    value: ParameterValue = getattr(parameter, which)
    return value


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, ParameterValue]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def parameter_message(value: ParameterValue) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return pb.InferParameter(int64_param=value)
        if 0 <= value < 2**64:
            return pb.InferParameter(uint64_param=value)
        raise InvalidArgument(f"the integer parameter {value} is outside the 64-bit range")
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def check_input(tensor: Tensor, inputs: Sequence[TensorSpec]) -> TensorSpec:
    """The model input ``tensor`` is, if its name, datatype and shape fit one (-1: any size); else an
    `InvalidArgument` naming what the model expects."""
    spec = next((s for s in inputs if s.name == tensor.name), None)
    accepted = "; ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in inputs)
    if spec is None:
        raise InvalidArgument(f"unknown input {tensor.name!r}; the model's inputs are {accepted} (send one)")
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
    fits = len(tensor.shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    )
    if not fits:
        raise InvalidArgument(
            f"input {spec.name!r} must have shape {list(spec.shape)} (-1: any size), got {list(tensor.shape)}"
        )
    return spec


def input_tensor(request: pb.ModelInferRequest, max_elements: int) -> Tensor:
    """The request's one input, from its raw contents or its typed contents."""
    if len(request.inputs) != 1:
        raise InvalidArgument(
            f"send exactly one input (IMAGE or PIXELS for a classifier, IMAGE for a detector); "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidArgument("raw_input_contents must hold exactly one entry per input, and no contents")
        return from_raw(
            tensor.name, tensor.datatype, tensor.shape, request.raw_input_contents[0], max_elements
        )
    field = "bytes_contents" if tensor.datatype == BYTES else NUMERIC.get(tensor.datatype, ("", None))[1]
    values: Any = getattr(tensor.contents, field) if field else []
    return from_values(tensor.name, tensor.datatype, tensor.shape, values, max_elements)


def datatype_of(array: np.ndarray) -> str:
    return BYTES if array.dtype == object else _DATATYPE_OF[array.dtype]


def selected_outputs(
    request: pb.ModelInferRequest, result: Inference, classifiable: Iterable[str]
) -> list[tuple[str, np.ndarray]]:
    """The outputs asked for (all, when none is named), in the order asked, with the classification
    extension applied where requested."""
    if not request.outputs:
        return list(result.outputs.items())
    chosen = []
    for wanted in request.outputs:
        if wanted.name not in result.outputs:
            raise InvalidArgument(
                f"unknown output {wanted.name!r}; the model's outputs are {', '.join(result.outputs)}"
            )
        params = parameters_of(wanted.parameters)
        unknown = sorted(set(params) - {CLASSIFICATION})
        if unknown:
            raise InvalidArgument(f"output {wanted.name!r}: unknown parameter {unknown[0]!r}")
        array = result.outputs[wanted.name]
        if CLASSIFICATION in params:
            k = params[CLASSIFICATION]
            if wanted.name not in classifiable or isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise InvalidArgument(
                    f"output {wanted.name!r}: classification needs an integer count >= 1 on a class-score "
                    f"output ({', '.join(classifiable) or 'none here'})"
                )
            array = classification(array, k, result.labels)
        chosen.append((wanted.name, array))
    return chosen


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the specification over ``backend``; ``attach`` gives it the server's health."""

    def __init__(
        self,
        backend: OipBackend,
        *,
        server_name: str,
        parameter_names: Iterable[str] = (),
        classifiable: Iterable[str] = (),
        max_elements: int,
        default_deadline_s: float,
        max_deadline_s: float,
    ) -> None:
        self._backend = backend
        self._name = server_name
        self._parameters = frozenset(parameter_names)
        self._classifiable = tuple(classifiable)
        self._max_elements = max_elements
        self._deadlines = (default_deadline_s, max_deadline_s)
        self._health: health.HealthServicer | None = None

    def attach(self, health_servicer: health.HealthServicer) -> None:
        """ServerReady reports what this health servicer says of the OIP service (SERVING or not)."""
        self._health = health_servicer

    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        if self._health is None:
            return pb.ServerReadyResponse(ready=False)
        status = self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), context).status
        return pb.ServerReadyResponse(ready=status == health_pb2.HealthCheckResponse.SERVING)

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._backend.ready(request.name, request.version))

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self._name, version=server_version(), extensions=EXTENSIONS)

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        versions = self._backend.versions(request.name)
        signature = self._backend.signature(request.name, request.version)

        def tensors(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=signature.platform,
            inputs=tensors(signature.inputs),
            outputs=tensors(signature.outputs),
        )

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        self._backend.versions(request.model_name)  # NOT_FOUND first: the gateway then asks another service
        params = parameters_of(request.parameters)
        unknown = sorted(set(params) - self._parameters - IGNORED_PARAMETERS)
        if unknown:
            accepted = ", ".join(sorted(self._parameters)) or "none"
            raise InvalidArgument(f"unknown parameter {unknown[0]!r}; this model accepts: {accepted}")
        tensor = input_tensor(request, self._max_elements)
        result = self._backend.infer(
            request.model_name,
            request.model_version,
            tensor,
            {k: v for k, v in params.items() if k in self._parameters},
            call_timeout(context, *self._deadlines),
        )
        response = pb.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version, id=request.id
        )
        for name, array in selected_outputs(request, result, self._classifiable):
            datatype = datatype_of(array)
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(to_raw(datatype, array.reshape(-1)))
        return response
