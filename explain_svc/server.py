"""Assemble explain_svc: engine, servicers, health, reflection."""

from __future__ import annotations

import logging

import grpc

from explain_svc.config import ExplainSettings
from explain_svc.model import ExplainEngine
from explain_svc.servicer import ExplainerServicer
from vision.models.store import ModelStore
from vision.rpc.catalog import add_model_catalog
from vision.rpc.server import GrpcServer, create_server
from vision.v1 import explainer_pb2, explainer_pb2_grpc

log = logging.getLogger(__name__)

EXPLAINER_SERVICE = explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name


def create_explain_server(settings: ExplainSettings) -> tuple[GrpcServer, ExplainEngine]:
    """Start listening at once (health NOT_SERVING), load and warm up the models, then report SERVING."""
    engine = ExplainEngine(
        ModelStore(settings.model_dir),
        device=settings.device,
        default_model=settings.default_model,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue=settings.max_queue,
        poll_interval_s=settings.poll_interval_s,
        image_limits=settings.image_limits,
        max_overlay_side=settings.max_overlay_side,
    )

    def register(server: grpc.Server) -> tuple[str, ...]:
        explainer_pb2_grpc.add_ExplainerServicer_to_server(
            ExplainerServicer(engine, settings.max_top_k), server
        )
        return (EXPLAINER_SERVICE, add_model_catalog(server, engine.registry))

    grpc_server = create_server(
        settings.address,
        register,
        max_message_bytes=settings.max_message_bytes,
        max_workers=settings.max_workers,
    )
    log.info("explain_svc listening on %s:%d (device %s)", settings.host, grpc_server.port, engine.device)
    engine.start()
    grpc_server.set_serving()
    log.info("explain_svc SERVING with models %s", sorted(engine.registry.loaded()) or "none yet")
    return grpc_server, engine
