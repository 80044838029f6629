"""Assemble classifier_svc: its engine and servicer on the shared model-service bootstrap, plus the
first-run ImageNet download."""

from __future__ import annotations

import threading

from classifier_svc.config import ClassifierSettings
from classifier_svc.model import ClassifierEngine
from classifier_svc.oip import oip_service
from classifier_svc.servicer import ClassifierServicer
from vision.models.pretrained import ensure_default_model
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer
from vision.rpc.service import ServiceSpec, start_model_service
from vision.v1 import classifier_pb2, classifier_pb2_grpc

SPEC = ServiceSpec(
    name="classifier",
    grpc_service=classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name,
    add_servicer=classifier_pb2_grpc.add_ClassifierServicer_to_server,
)


def create_classifier_server(settings: ClassifierSettings) -> tuple[GrpcServer, ClassifierEngine]:
    """Listen, load the stored models, report SERVING (see `start_model_service`); the Open Inference
    Protocol (`classifier_svc.oip`) is served on the same port.

    With an empty store the ImageNet download runs in the background so it never delays startup; the
    registry's poller picks the model up when it lands.
    """
    engine = ClassifierEngine(ModelStore(settings.model_dir), settings)

    def fetch_if_empty() -> None:
        if settings.fetch_pretrained and not engine.registry.store.names():
            threading.Thread(
                target=ensure_default_model,
                args=(engine.registry.store,),
                kwargs={"url": settings.pretrained_url or None, "timeout": settings.pretrained_timeout_s},
                name="fetch-pretrained",
                daemon=True,
            ).start()

    servicer = ClassifierServicer(engine, settings.max_top_k)
    server = start_model_service(
        SPEC, settings, engine, servicer, before_load=fetch_if_empty, extra_services=[oip_service(engine)]
    )
    return server, engine
