"""Assemble detector_svc: its engine and servicer on the shared model-service bootstrap, plus the first-run
yolo11n fetch."""

from __future__ import annotations

import threading

from detector_svc.config import DetectorSettings
from detector_svc.fetch import ensure_default_detector, has_detection_model
from detector_svc.model import DetectorEngine
from detector_svc.offline import make_ultralytics_offline
from detector_svc.oip import oip_service
from detector_svc.servicer import DetectorServicer
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer
from vision.rpc.service import ServiceSpec, start_model_service
from vision.v1 import detector_pb2, detector_pb2_grpc

SPEC = ServiceSpec(
    name="detector",
    grpc_service=detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
    add_servicer=detector_pb2_grpc.add_DetectorServicer_to_server,
)


def create_detector_server(settings: DetectorSettings) -> tuple[GrpcServer, DetectorEngine]:
    """Listen, load the stored models, report SERVING (see `start_model_service`).

    With no detection model in the store, the yolo11n download runs in the background so it never delays
    startup; requests meanwhile get NOT_FOUND saying how to import one.
    """
    make_ultralytics_offline()
    engine = DetectorEngine(ModelStore(settings.model_dir), settings)

    def fetch_if_missing() -> None:
        if settings.fetch_default and not has_detection_model(engine.registry.store):
            threading.Thread(
                target=ensure_default_detector,
                args=(engine.registry.store, settings.default_weights_url, settings.fetch_timeout_s),
                name="fetch-default-detector",
                daemon=True,
            ).start()

    servicer = DetectorServicer(engine)
    server = start_model_service(
        SPEC, settings, engine, servicer, before_load=fetch_if_missing, extra_services=[oip_service(engine)]
    )
    return server, engine
