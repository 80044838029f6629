"""Prometheus metrics of a process, served on a port of their own (never the public one).

Every process has one `CollectorRegistry` (several servers in one test process do not collide) served at
``/metrics`` by `start_metrics_endpoint`. gRPC servers count their calls under the names of the
grpc-prometheus convention (`GrpcServerMetrics`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Seconds, for request, call and stage latencies: 1 ms to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GrpcServerMetrics:
    """``grpc_server_started_total``, ``grpc_server_handled_total`` (by code) and
    ``grpc_server_handling_seconds``, labelled ``grpc_type``, ``grpc_service``, ``grpc_method``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (streams: to their end).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server."""

    server: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_endpoint(
    registry: CollectorRegistry, host: str, port: int, setting: str
) -> MetricsEndpoint | None:
    """Serve ``registry`` at ``http://host:port/metrics`` (None when ``port`` is 0: metrics off).

    ``setting`` names the variable of ``port`` for the error when it cannot be bound (it fails the start,
    as the gRPC port does: a service whose metrics cannot be scraped should not pass for healthy)."""
    if port == 0:
        return None
    bind = host.strip("[]") or "0.0.0.0"
    try:
        server, thread = start_http_server(port, addr=bind, registry=registry)
    except OSError as exc:
        raise RuntimeError(f"could not serve metrics on {host}:{port} ({setting}): {exc}") from exc
    log.info("metrics on http://%s:%d/metrics", host, port)
    return MetricsEndpoint(server, thread, port)
