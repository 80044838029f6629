"""gRPC channels and stubs to the services, created once at startup and shared by every request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import grpc
from fastapi import Depends, Request
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth.context import caller_metadata
from gateway.config import GatewaySettings
from gateway.errors import ApiError, from_rpc_error
from gateway.slots import Slots
from gateway.train.upload import UPLOAD_CHANNEL_OPTIONS
from vision.oip_pb import grpc_service_pb2_grpc
from vision.security.tls import TlsSettings, open_aio_channel, open_channel
from vision.telemetry.tracing import grpc_aio_client_interceptors, traced_channel
from vision.v1 import (
    classifier_pb2_grpc,
    detector_pb2_grpc,
    explainer_pb2_grpc,
    models_pb2_grpc,
    trainer_pb2_grpc,
)

Reply = TypeVar("Reply")


@dataclass
class Backends:
    """The channels to the services: asyncio ones for every call, plus one synchronous channel to the
    trainer for the CreateJob upload stream (see `gateway.train.upload` for why)."""

    settings: GatewaySettings
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    trainer_upload_channel: grpc.Channel | None = None
    # The long calls to the trainer, capped per gateway (each holds a trainer stream for minutes).
    uploads: Slots = field(default_factory=lambda: Slots(1, "uploads", 1))
    event_streams: Slots = field(default_factory=lambda: Slots(1, "event streams", 1))
    # Open Inference Protocol: which service serves each model name (learnt from answers, see routers/oip).
    oip_routes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: GatewaySettings, tls: TlsSettings | None = None) -> Backends:
        """Open a channel to every configured service (lazily connected: a service may start later).

        With ``tls`` (None: ``VISION_TLS_*`` from the environment) naming a CA or a certificate, every channel
        uses TLS: services are checked against ``VISION_TLS_CA_FILE`` and the gateway presents
        ``VISION_TLS_CERT_FILE``/``KEY_FILE`` as its client certificate (see `vision.security.tls`)."""
        tls = tls if tls is not None else TlsSettings()
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.lb_policy_name", settings.lb_policy),
        ]
        # With tracing on: a client span per call, and its traceparent in the call's metadata.
        traced = grpc_aio_client_interceptors()
        channels = {
            name: open_aio_channel(addr, tls, options, interceptors=traced)
            for name, addr in settings.backends().items()
        }
        upload = None
        if settings.trainer_addr:
            upload_options = [*UPLOAD_CHANNEL_OPTIONS, ("grpc.lb_policy_name", settings.lb_policy)]
            upload = traced_channel(open_channel(settings.trainer_addr, tls, upload_options))
        return cls(
            settings,
            channels,
            upload,
            uploads=Slots(settings.train_max_concurrent, "training uploads", settings.retry_after_s),
            event_streams=Slots(settings.events_max_streams, "job event streams", settings.retry_after_s),
        )

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=None)
        if self.trainer_upload_channel is not None:
            self.trainer_upload_channel.close()

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to ``service``; 503 when that service is not part of this deployment."""
        if service not in self.channels:
            raise ApiError(
                503,
                "not_deployed",
                f"the {service} service is not deployed here (set VISION_GATEWAY_{service.upper()}_ADDR)",
            )
        return self.channels[service]

    async def call(self, service: str, method: Callable[..., Awaitable[Reply]], request: Message) -> Reply:
        """Call ``method`` with the configured deadline and the caller's principal in the metadata; gRPC
        failures become the matching HTTP error."""
        try:
            return await method(request, timeout=self.settings.timeout_s, metadata=caller_metadata())
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, service, self.settings.retry_after_s) from exc

    @property
    def classifier(self) -> classifier_pb2_grpc.ClassifierStub:
        return classifier_pb2_grpc.ClassifierStub(self.channel("classifier"))

    def catalog(self, service: str) -> models_pb2_grpc.ModelCatalogStub:
        """``service``'s ModelCatalog: the stored models as that service sees them (loaded, runtime)."""
        return models_pb2_grpc.ModelCatalogStub(self.channel(service))

    @property
    def explainer(self) -> explainer_pb2_grpc.ExplainerStub:
        return explainer_pb2_grpc.ExplainerStub(self.channel("explain"))

    @property
    def detector(self) -> detector_pb2_grpc.DetectorStub:
        return detector_pb2_grpc.DetectorStub(self.channel("detector"))

    def oip(self, service: str) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
        """The Open Inference Protocol on ``service``'s port (classifier or detector)."""
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel(service))

    @property
    def trainer_upload(self) -> grpc.Channel:
        """The synchronous channel for CreateJob uploads; 503 when no trainer is deployed."""
        self.channel("trainer")
        assert self.trainer_upload_channel is not None
        return self.trainer_upload_channel

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerStub:
        return trainer_pb2_grpc.TrainerStub(self.channel("trainer"))

    async def health(self) -> dict[str, str]:
        """{service: SERVING | NOT_SERVING | UNAVAILABLE ...} from each service's grpc.health.v1, asked of all
        at once (one slow service costs the health timeout once, not once per service)."""

        async def check(channel: grpc.aio.Channel) -> str:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=self.settings.health_timeout_s
                )
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)

        names = list(self.channels)
        statuses = await asyncio.gather(*(check(self.channels[name]) for name in names))
        return dict(zip(names, statuses, strict=True))


def get_backends(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


BackendsDep = Annotated[Backends, Depends(get_backends)]
