"""Assemble classifier_svc: engine, servicers, health, reflection."""

from __future__ import annotations

import logging
import threading

import grpc

from classifier_svc.config import ClassifierSettings
from classifier_svc.model import ClassifierEngine
from classifier_svc.servicer import ClassifierServicer
from vision.models.pretrained import ensure_default_model
from vision.models.store import ModelStore
from vision.rpc.catalog import add_model_catalog
from vision.rpc.server import GrpcServer, create_server
from vision.v1 import classifier_pb2, classifier_pb2_grpc

log = logging.getLogger(__name__)

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name


def build_engine(settings: ClassifierSettings) -> ClassifierEngine:
    return ClassifierEngine(
        ModelStore(settings.model_dir),
        device=settings.device,
        half=settings.half,
        default_model=settings.default_model,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue=settings.max_queue,
        poll_interval_s=settings.poll_interval_s,
        image_limits=settings.image_limits,
    )


def create_classifier_server(settings: ClassifierSettings) -> tuple[GrpcServer, ClassifierEngine]:
    """Start listening at once (health NOT_SERVING), load and warm up the models, then report SERVING.

    With an empty store the ImageNet download runs in the background so it never delays startup; the
    registry's poller picks the model up when it lands.
    """
    engine = build_engine(settings)

    def register(server: grpc.Server) -> tuple[str, ...]:
        classifier_pb2_grpc.add_ClassifierServicer_to_server(
            ClassifierServicer(engine, settings.max_top_k), server
        )
        return (CLASSIFIER_SERVICE, add_model_catalog(server, engine.registry))

    grpc_server = create_server(
        settings.address,
        register,
        max_message_bytes=settings.max_message_bytes,
        max_workers=settings.max_workers,
    )
    log.info("classifier_svc listening on %s:%d (device %s)", settings.host, grpc_server.port, engine.device)
    if settings.fetch_pretrained and not engine.registry.store.names():
        threading.Thread(
            target=ensure_default_model,
            args=(engine.registry.store,),
            kwargs={"url": settings.pretrained_url or None, "timeout": settings.pretrained_timeout_s},
            name="fetch-pretrained",
            daemon=True,
        ).start()
    engine.start()
    grpc_server.set_serving()
    log.info("classifier_svc SERVING with models %s", sorted(engine.registry.loaded()) or "none yet")
    return grpc_server, engine
