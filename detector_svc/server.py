"""Assemble detector_svc: engine, servicers, health, reflection, the first-run yolo11n fetch."""

from __future__ import annotations

import logging
import threading

import grpc

from detector_svc.config import DetectorSettings
from detector_svc.fetch import ensure_default_detector, has_detection_model
from detector_svc.model import DetectorEngine
from detector_svc.offline import make_ultralytics_offline
from detector_svc.servicer import DetectorServicer
from vision.models.store import ModelStore
from vision.rpc.catalog import add_model_catalog
from vision.rpc.server import GrpcServer, create_server
from vision.v1 import detector_pb2, detector_pb2_grpc

log = logging.getLogger(__name__)

DETECTOR_SERVICE = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name


def build_engine(settings: DetectorSettings) -> DetectorEngine:
    return DetectorEngine(
        ModelStore(settings.model_dir),
        device=settings.device,
        half=settings.half,
        default_model=settings.default_model,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue=settings.max_queue,
        poll_interval_s=settings.poll_interval_s,
        image_limits=settings.image_limits,
        max_det_limit=settings.max_det,
        max_imgsz=settings.max_imgsz,
    )


def create_detector_server(settings: DetectorSettings) -> tuple[GrpcServer, DetectorEngine]:
    """Start listening at once (health NOT_SERVING), load and warm up the models, then report SERVING.

    With no detection model in the store, the yolo11n download runs in the background so it never delays
    startup; requests meanwhile get NOT_FOUND saying how to import one.
    """
    make_ultralytics_offline()
    engine = build_engine(settings)

    def register(server: grpc.Server) -> tuple[str, ...]:
        detector_pb2_grpc.add_DetectorServicer_to_server(DetectorServicer(engine), server)
        return (DETECTOR_SERVICE, add_model_catalog(server, engine.registry))

    grpc_server = create_server(
        settings.address,
        register,
        max_message_bytes=settings.max_message_bytes,
        max_workers=settings.max_workers,
    )
    log.info("detector_svc listening on %s:%d (device %s)", settings.host, grpc_server.port, engine.device)
    if settings.fetch_default and not has_detection_model(engine.registry.store):
        threading.Thread(
            target=ensure_default_detector,
            args=(engine.registry.store, settings.default_weights_url, settings.fetch_timeout_s),
            name="fetch-default-detector",
            daemon=True,
        ).start()
    engine.start()
    grpc_server.set_serving()
    log.info("detector_svc SERVING with models %s", sorted(engine.registry.loaded()) or "none yet")
    return grpc_server, engine
