"""One bootstrap for every model service (classifier, explain, detector): listen, load, report, serve.

A service supplies its settings, its engine and its servicer; this module does the rest the same way for
all of them, so each service's ``server.py`` holds only what is its own (e.g. a first-run download).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vision.logs import configure_logging
from vision.rpc.catalog import add_model_catalog
from vision.rpc.server import GrpcServer, create_server, serve_until_signalled
from vision.serving.engine import ServingEngine
from vision.settings import ModelServiceSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a model service itself: its name, its gRPC service and how to add its servicer."""

    name: str  # "classifier": logs and the process's log prefix
    grpc_service: str  # full name, e.g. "vision.v1.Classifier": health and reflection
    add_servicer: Callable[[Any, grpc.Server], None]  # the generated add_<X>Servicer_to_server


def start_model_service(
    spec: ServiceSpec,
    settings: ModelServiceSettings,
    engine: ServingEngine[Any, Any, Any],
    servicer: Any,
    *,
    before_load: Callable[[], None] | None = None,
) -> GrpcServer:
    """Listen at once (health NOT_SERVING), load and warm up what the store holds, then report SERVING.

    SERVING means the server can answer: a model that failed to load is reported per model (ModelCatalog's
    ``load_error``, the gateway's ``GET /models``), not by the whole service going unhealthy. ``before_load``
    runs after the port is bound and before the models load (e.g. start a background first-run download).
    """

    def register(server: grpc.Server) -> tuple[str, ...]:
        spec.add_servicer(servicer, server)
        return (spec.grpc_service, add_model_catalog(server, engine.registry))

    grpc_server = create_server(
        settings.address,
        register,
        max_message_bytes=settings.max_message_bytes,
        max_workers=settings.max_workers,
    )
    log.info("%s listening on %s:%d (device %s)", spec.name, settings.host, grpc_server.port, engine.device)
    if before_load is not None:
        before_load()
    engine.start()
    grpc_server.set_serving()
    failed = engine.registry.load_errors()
    log.info(
        "%s SERVING with models %s%s",
        spec.name,
        sorted(engine.registry.loaded()) or "none yet",
        f"; could not load {sorted(failed)}" if failed else "",
    )
    return grpc_server


def run_model_service(
    spec: ServiceSpec,
    settings: ModelServiceSettings,
    create: Callable[[Any], tuple[GrpcServer, ServingEngine[Any, Any, Any]]],
) -> None:
    """A service's ``__main__``: configure logging, start, serve until SIGTERM/SIGINT, drain, close."""
    configure_logging(settings.log_level, settings.log_json, service=spec.name)
    server, engine = create(settings)
    serve_until_signalled(
        server, settings.grace_seconds, on_stop=engine.close, shutdown_delay=settings.shutdown_delay_seconds
    )
