"""gRPC server bootstrap shared by every service: health, reflection, message limits, graceful shutdown.

Health follows grpc.health.v1: NOT_SERVING until the service calls ``set_serving()`` (its models loaded and
warmed up), SERVING after, NOT_SERVING again the moment shutdown starts, so load balancers stop sending
traffic while in-flight calls finish within the grace period.

Health checks run on threads of their own and other calls are admitted up to a limit (`vision.rpc.admission`):
a server whose handler threads are all busy answers ``Health/Check`` at once and refuses new calls with
RESOURCE_EXHAUSTED instead of queueing them.

Every call is counted and timed under the grpc-prometheus names (`vision.telemetry`), served with the
service's other metrics on a port of its own (``VISION_<SVC>_METRICS_PORT``); with tracing configured
(``OTEL_*``), each call continues its caller's trace.

Transport security comes from `vision.security.tls` (``VISION_TLS_*``): plaintext, TLS or mutual TLS on the
service's port. Kubernetes' native gRPC probes speak no TLS, so a service may also open a plaintext port that
answers ``grpc.health.v1`` alone, from the same health servicer (``VISION_<SVC>_HEALTH_PORT``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from vision.rpc.admission import AdmissionInterceptor, CountingExecutor
from vision.rpc.status import ErrorMappingInterceptor
from vision.security.tls import TlsSettings, server_credentials
from vision.telemetry.grpc_server import CallTelemetryInterceptor
from vision.telemetry.metrics import GrpcServerMetrics, MetricsEndpoint, start_metrics_endpoint
from vision.telemetry.tracing import grpc_server_interceptors

log = logging.getLogger(__name__)


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    transport: str = "plaintext"  # of ``port``: "plaintext", "TLS" or "mutual TLS"
    health_server: grpc.Server | None = None  # plaintext, grpc.health.v1 only
    health_port: int = 0  # 0: no health port
    metrics: MetricsEndpoint | None = None  # /metrics over HTTP; None: off

    def set_serving(self) -> None:
        """Report SERVING for the whole server and each of its services (on the health port too)."""
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> threading.Event:
        """NOT_SERVING at once, refuse new calls, let in-flight ones finish within ``grace`` seconds.

        The health port keeps answering (NOT_SERVING) until the main server has stopped; the event returned
        is set when both have."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        if self.health_server is None and self.metrics is None:
            return stopped
        both = threading.Event()
        health_server, metrics = self.health_server, self.metrics

        def stop_health_after_main() -> None:
            stopped.wait()
            if health_server is not None:
                health_server.stop(None).wait()
            if metrics is not None:
                metrics.stop()
            both.set()

        threading.Thread(target=stop_health_after_main, name="stop-health-port", daemon=True).start()
        return both

    def wait_for_termination(self) -> None:
        """Block until the server (and its health port) have stopped."""
        self.server.wait_for_termination()
        if self.health_server is not None:
            self.health_server.wait_for_termination()


def create_server(
    address: str,
    register: Callable[[grpc.Server], Iterable[str]],
    *,
    max_message_bytes: int,
    max_workers: int = 32,
    max_concurrent_rpcs: int = 0,
    health_workers: int = 2,
    tls: TlsSettings | None = None,
    health_port: int = 0,
    metrics_registry: CollectorRegistry | None = None,
    metrics_port: int = 0,
    metrics_setting: str = "metrics port",
    max_connection_age_s: float = 0.0,
    max_connection_age_grace_s: float = 0.0,
) -> GrpcServer:
    """Build and start a server on ``address`` ("host:0" picks a free port, returned as ``port``).

    ``register(server)`` adds the servicers and returns their full service names (for health and reflection).
    At most ``max_concurrent_rpcs`` calls (0, or more than ``max_workers``: ``max_workers``) run at once,
    streams counted while open; more are refused with RESOURCE_EXHAUSTED. ``Health/Check`` runs on
    ``health_workers`` threads of its own, outside that limit.

    The port speaks what ``tls`` says (None: ``VISION_TLS_*`` from the environment; see
    `vision.security.tls.server_credentials`). ``health_port`` (0: none) is a second, plaintext port on the
    same host serving only grpc.health.v1 from the same health servicer, for probes that cannot speak TLS.
    ``max_connection_age_s`` (0: none) closes each client connection that old with a GOAWAY once its calls
    have had ``max_connection_age_grace_s`` to finish: clients then connect again, resolving the service's
    name anew, so replicas added behind a headless Service get their share of the traffic.
    ``metrics_registry`` (None: a new one) gets the server's call metrics; it is served at ``/metrics`` on
    ``metrics_port`` of the same host (0: not served; ``metrics_setting`` names it in errors).
    Bad TLS files and ports that cannot be bound fail here, before anything is served.
    """
    tls = tls if tls is not None else TlsSettings()
    credentials = server_credentials(tls)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
        ]
    limit = min(max_concurrent_rpcs or max_workers, max_workers)
    calls = CountingExecutor(max_workers, thread_name_prefix="grpc-call")
    admission = AdmissionInterceptor(
        limit,
        calls,
        health_pool=CountingExecutor(health_workers, thread_name_prefix="grpc-health"),
        reject_pool=CountingExecutor(2, thread_name_prefix="grpc-refuse"),
    )
    registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
    server = grpc.server(
        calls,
        options=options,
        # Telemetry first, to see every call and its final code; admission next: it must see the behaviours
        # the others return (and keeps refusals out of the traces); error mapping last, next to the servicer.
        interceptors=[
            CallTelemetryInterceptor(GrpcServerMetrics(registry)),
            admission,
            *grpc_server_interceptors(),
            ErrorMappingInterceptor(),
        ],
    )
    names = tuple(register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = _bind(server, address, credentials)
    host = address.rpartition(":")[0]
    try:
        health_server = _health_only_server(address, health_port, health_servicer, health_workers)
        metrics = start_metrics_endpoint(registry, host, metrics_port, metrics_setting)
    except BaseException:
        server.stop(None)
        raise
    server.start()
    if health_server is not None:
        health_server.start()
    log.info(
        "gRPC port %d: %s%s",
        port,
        tls.mode,
        f"; plaintext health checks on port {health_port}" if health_server is not None else "",
    )
    return GrpcServer(server, port, health_servicer, names, tls.mode, health_server, health_port, metrics)


def _bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        try:
            port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # gRPC says only "failed to bind", also for a key that fits no cert
            raise RuntimeError(
                f"could not listen on {address} with TLS: is it in use, or is VISION_TLS_KEY_FILE not the "
                "key of VISION_TLS_CERT_FILE?"
            ) from exc
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    return port


def _health_only_server(
    address: str, port: int, servicer: health.HealthServicer, workers: int
) -> grpc.Server | None:
    """A plaintext server on ``port`` of ``address``'s host answering grpc.health.v1 alone (None for 0)."""
    if port == 0:
        return None
    host = address.rpartition(":")[0]
    server = grpc.server(
        ThreadPoolExecutor(workers, thread_name_prefix="grpc-health-port"), options=[("grpc.so_reuseport", 0)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"could not listen on {host}:{port} (health port)")
    return server


def serve_until_signalled(
    grpc_server: GrpcServer,
    grace: float,
    on_stop: Callable[[], None] | None = None,
    shutdown_delay: float = 0.0,
) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully.

    Health turns NOT_SERVING at once; new calls are still accepted for ``shutdown_delay`` seconds (time for
    load balancers to notice), then refused while in-flight calls get up to ``grace`` seconds to finish.
    """
    stopping = threading.Event()

    def drain() -> None:
        time.sleep(shutdown_delay)
        grpc_server.stop(grace)

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info(
            "received %s: NOT_SERVING, draining in-flight calls for up to %.0fs",
            signal.Signals(signum).name,
            shutdown_delay + grace,
        )
        grpc_server.health.enter_graceful_shutdown()
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    grpc_server.wait_for_termination()
    if on_stop is not None:
        on_stop()
    log.info("stopped")
