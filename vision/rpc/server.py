"""gRPC server bootstrap shared by every service: health, reflection, message limits, graceful shutdown.

Health follows grpc.health.v1: NOT_SERVING until the service calls ``set_serving()`` (its models loaded and
warmed up), SERVING after, NOT_SERVING again the moment shutdown starts, so load balancers stop sending
traffic while in-flight calls finish within the grace period.

Health checks run on threads of their own and other calls are admitted up to a limit (`vision.rpc.admission`):
a server whose handler threads are all busy answers ``Health/Check`` at once and refuses new calls with
RESOURCE_EXHAUSTED instead of queueing them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vision.rpc.admission import AdmissionInterceptor, CountingExecutor
from vision.rpc.status import ErrorMappingInterceptor

log = logging.getLogger(__name__)


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]

    def set_serving(self) -> None:
        """Report SERVING for the whole server and each of its services."""
        for name in ("", *self.service_names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> threading.Event:
        """NOT_SERVING at once, refuse new calls, let in-flight ones finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace)


def create_server(
    address: str,
    register: Callable[[grpc.Server], Iterable[str]],
    *,
    max_message_bytes: int,
    max_workers: int = 32,
    max_concurrent_rpcs: int = 0,
    health_workers: int = 2,
) -> GrpcServer:
    """Build and start a server on ``address`` ("host:0" picks a free port, returned as ``port``).

    ``register(server)`` adds the servicers and returns their full service names (for health and reflection).
    At most ``max_concurrent_rpcs`` calls (0, or more than ``max_workers``: ``max_workers``) run at once,
    streams counted while open; more are refused with RESOURCE_EXHAUSTED. ``Health/Check`` runs on
    ``health_workers`` threads of its own, outside that limit.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    limit = min(max_concurrent_rpcs or max_workers, max_workers)
    calls = CountingExecutor(max_workers, thread_name_prefix="grpc-call")
    admission = AdmissionInterceptor(
        limit,
        calls,
        health_pool=CountingExecutor(health_workers, thread_name_prefix="grpc-health"),
        reject_pool=CountingExecutor(2, thread_name_prefix="grpc-refuse"),
    )
    server = grpc.server(
        calls,
        options=options,
        # Admission first: it must see the behaviours the error mapping returns.
        interceptors=[admission, ErrorMappingInterceptor()],
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
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not listen on {address}")
    server.start()
    return GrpcServer(server, port, health_servicer, names)


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
        grpc_server.server.stop(grace)

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
    grpc_server.server.wait_for_termination()
    if on_stop is not None:
        on_stop()
    log.info("stopped")
