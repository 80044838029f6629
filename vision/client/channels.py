"""The channels of a client: one per configured service, TLS as `TlsSettings` say, message limits and
reconnection paced by the client's own backoff (so a service that comes back is dialled again by the time
the next attempt is sent, not after gRPC's default reconnect backoff of up to two minutes)."""

from __future__ import annotations

from typing import Any

import grpc

from vision.client.settings import ClientSettings
from vision.security.tls import TlsSettings, open_aio_channel, open_channel
from vision.telemetry.tracing import grpc_aio_client_interceptors, traced_channel


def channel_options(settings: ClientSettings) -> list[tuple[str, Any]]:
    initial_ms = max(1, round(settings.backoff_initial_s * 1000))
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.lb_policy_name", settings.lb_policy),
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max(initial_ms, round(settings.backoff_max_s * 1000))),
    ]


def open_sync(settings: ClientSettings, tls: TlsSettings, service: str) -> grpc.Channel:
    """A synchronous channel to ``service`` (lazily connected; traced when OTEL_* configured tracing)."""
    return traced_channel(open_channel(settings.address(service), tls, channel_options(settings)))


def open_async(settings: ClientSettings, tls: TlsSettings, service: str) -> grpc.aio.Channel:
    """An asyncio channel to ``service``; made inside the event loop that will use it."""
    return open_aio_channel(
        settings.address(service),
        tls,
        channel_options(settings),
        interceptors=grpc_aio_client_interceptors(),
    )
