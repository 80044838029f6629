"""Every method the client calls: which service serves it, whether it may be sent again, and its stub;
for sync and asyncio channels alike (the generated stubs take either)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vision.client.errors import NotConfiguredError
from vision.client.settings import ENV_PREFIX
from vision.errors import InvalidArgument
from vision.v1 import (
    classifier_pb2_grpc,
    detector_pb2_grpc,
    explainer_pb2_grpc,
    models_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)


@dataclass(frozen=True)
class MethodSpec:
    service: str  # the client's name of the service: classifier, explain, detector, trainer
    stub: type
    rpc: str
    idempotent: bool  # safe to send again after UNAVAILABLE (see vision.client.retry)

    @property
    def full_name(self) -> str:
        return f"{self.stub.__name__.removesuffix('Stub')}/{self.rpc}"


_TRAINER = trainer_pb2_grpc.TrainerStub
METHODS: dict[str, MethodSpec] = {
    "Classify": MethodSpec("classifier", classifier_pb2_grpc.ClassifierStub, "Classify", True),
    "Explain": MethodSpec("explain", explainer_pb2_grpc.ExplainerStub, "Explain", True),
    "Detect": MethodSpec("detector", detector_pb2_grpc.DetectorStub, "Detect", True),
    **{
        f"ListModels@{service}": MethodSpec(service, models_pb2_grpc.ModelCatalogStub, "ListModels", True)
        for service in ("classifier", "explain", "detector")
    },
    "CreateJob": MethodSpec("trainer", _TRAINER, "CreateJob", False),
    "GetJob": MethodSpec("trainer", _TRAINER, "GetJob", True),
    "ListJobs": MethodSpec("trainer", _TRAINER, "ListJobs", True),
    "CancelJob": MethodSpec("trainer", _TRAINER, "CancelJob", False),
    "WatchJob": MethodSpec("trainer", _TRAINER, "WatchJob", True),  # resumed after the last event's seq
}


class Stubs:
    """The stubs over a client's channels ({service: channel}), made once each."""

    def __init__(self, channels: Mapping[str, Any]) -> None:
        self._channels = channels
        self._stubs: dict[tuple[str, type], Any] = {}

    def channel(self, service: str) -> Any:
        if service not in self._channels:
            raise NotConfiguredError(
                f"no address for the {service} service: set {ENV_PREFIX}{service.upper()}_ADDR or pass "
                f"{service}= to the client",
                attempts=0,
            )
        return self._channels[service]

    def method(self, spec: MethodSpec) -> Any:
        key = (spec.service, spec.stub)
        stub = self._stubs.get(key)
        if stub is None:  # racing threads may both make one: equivalent, and either is kept
            stub = self._stubs[key] = spec.stub(self.channel(spec.service))
        return getattr(stub, spec.rpc)


def catalog_of(service: str) -> str:
    """The METHODS key of ``service``'s ListModels; `InvalidArgument` for a service without a catalog."""
    name = f"ListModels@{service}"
    if name not in METHODS:
        raise InvalidArgument(f"no model catalog on {service!r}; accepted: classifier, explain, detector")
    return name


def watch_request(job_id: str, after_seq: int) -> trainer_pb2.WatchJobRequest:
    return trainer_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq)
