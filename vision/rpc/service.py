"""One bootstrap for every model service (classifier, explain, detector): listen, load, report, serve.

A service supplies its settings, its engine and its servicer; this module does the rest the same way for
all of them, so each service's ``server.py`` holds only what is its own (e.g. a first-run download).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from vision.logs import configure_logging
from vision.rpc.catalog import add_model_catalog
from vision.rpc.server import GrpcServer, create_server, serve_until_signalled
from vision.serving.engine import ServingEngine
from vision.settings import ModelServiceSettings, cpu_cores
from vision.telemetry.tracing import configure_tracing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What makes a model service itself: its name, its gRPC service and how to add its servicer."""

    name: str  # "classifier": logs and the process's log prefix
    grpc_service: str  # full name, e.g. "vision.v1.Classifier": health and reflection
    add_servicer: Callable[[Any, grpc.Server], None]  # the generated add_<X>Servicer_to_server


@dataclass(frozen=True)
class ExtraService:
    """Another gRPC service on the same port as the service's own (e.g. the Open Inference Protocol): the
    same limits, admission, interceptors and health; reflection lists it."""

    grpc_service: str  # full name: health and reflection
    add: Callable[[grpc.Server], None]
    on_started: Callable[[GrpcServer], None] | None = None  # once the server exists (e.g. to read its health)


def start_model_service(
    spec: ServiceSpec,
    settings: ModelServiceSettings,
    engine: ServingEngine[Any, Any, Any],
    servicer: Any,
    *,
    before_load: Callable[[], None] | None = None,
    extra_services: Sequence[ExtraService] = (),
) -> GrpcServer:
    """Listen at once (health NOT_SERVING), load and warm up what the store holds, then report SERVING.

    SERVING means the server can answer: a model that failed to load is reported per model (ModelCatalog's
    ``load_error``, the gateway's ``GET /models``), not by the whole service going unhealthy. ``before_load``
    runs after the port is bound and before the models load (e.g. start a background first-run download).
    ``extra_services`` are served on the same port and reported SERVING with the service's own.
    """

    def register(server: grpc.Server) -> tuple[str, ...]:
        spec.add_servicer(servicer, server)
        for extra in extra_services:
            extra.add(server)
        names = (spec.grpc_service, add_model_catalog(server, engine.registry))
        return (*names, *(extra.grpc_service for extra in extra_services))

    grpc_server = create_server(
        settings.address,
        register,
        max_message_bytes=settings.max_message_bytes,
        max_workers=settings.max_workers,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        health_workers=settings.health_workers,
        health_port=settings.health_port,
        metrics_registry=engine.metrics_registry,
        metrics_port=settings.metrics_port,
        metrics_setting=settings.metrics_port_setting,
        max_connection_age_s=settings.max_connection_age_s,
        max_connection_age_grace_s=settings.max_connection_age_grace_s,
    )
    for extra in extra_services:
        if extra.on_started is not None:
            extra.on_started(grpc_server)
    log.info(
        "%s listening on %s:%d (%s, device %s)",
        spec.name,
        settings.host,
        grpc_server.port,
        grpc_server.transport,
        engine.device,
    )
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


# glibc mallopt() parameters, and the values model services run with (see `return_freed_memory_promptly`).
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
ARENA_MAX = 2


def return_freed_memory_promptly() -> bool:
    """Make glibc give large freed blocks back to the system at once, in every model service process.

    A decoded photo is 4 bytes a pixel in Pillow (160 MB at 40 MP), in 16 MiB blocks. By default glibc raises
    its mmap threshold after the first such block is freed, so later ones come from per-thread arenas and
    stay there: a burst of large images decoded on many handler threads left GBs resident after it ended.
    A fixed 4 MiB threshold (blocks of 4 MiB and more are mapped and unmapped) and at most 2 arenas keep the
    peak at what the decode slots allow and return it afterwards. ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_ARENA_MAX`` in the environment take precedence. Returns whether the settings were applied.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    applied = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied &= mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied &= mallopt(_M_ARENA_MAX, ARENA_MAX) == 1
    return applied


def run_model_service(
    spec: ServiceSpec,
    settings: ModelServiceSettings,
    create: Callable[[Any], tuple[GrpcServer, ServingEngine[Any, Any, Any]]],
) -> None:
    """A service's ``__main__``: configure logging, start, serve until SIGTERM/SIGINT, drain, close."""
    return_freed_memory_promptly()
    configure_logging(settings.log_level, settings.log_json, service=spec.name)
    threads = settings.torch_threads or cpu_cores()
    torch.set_num_threads(threads)  # torch's default is the node's cores, not the container's limit
    log.info("%s: %d torch threads", spec.name, threads)
    configure_tracing(f"vision-{spec.name}")
    server, engine = create(settings)
    serve_until_signalled(
        server, settings.grace_seconds, on_stop=engine.close, shutdown_delay=settings.shutdown_delay_seconds
    )
