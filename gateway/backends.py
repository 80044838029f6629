"""gRPC channels and stubs to the services, created once at startup and shared by every request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import grpc
from fastapi import Depends, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from vision.v1 import classifier_pb2_grpc, models_pb2_grpc


@dataclass
class Backends:
    settings: GatewaySettings
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: GatewaySettings) -> Backends:
        """Open a channel to every configured service (lazily connected: a service may start later)."""
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.enable_retries", 1),
        ]
        channels = {
            name: grpc.aio.insecure_channel(addr, options=options)
            for name, addr in settings.backends().items()
        }
        return cls(settings, channels)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=None)

    @property
    def classifier(self) -> classifier_pb2_grpc.ClassifierStub:
        return classifier_pb2_grpc.ClassifierStub(self.channels["classifier"])

    @property
    def classifier_models(self) -> models_pb2_grpc.ModelCatalogStub:
        return models_pb2_grpc.ModelCatalogStub(self.channels["classifier"])

    async def health(self) -> dict[str, str]:
        """{service: SERVING | NOT_SERVING | UNAVAILABLE ...} from each service's grpc.health.v1."""
        report = {}
        for name, channel in self.channels.items():
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=self.settings.health_timeout_s
                )
                report[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                report[name] = exc.code().name
        return report


def get_backends(request: Request) -> Backends:
    backends: Backends = request.app.state.backends
    return backends


BackendsDep = Annotated[Backends, Depends(get_backends)]
