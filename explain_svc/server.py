"""Assemble explain_svc: its engine and servicer on the shared model-service bootstrap."""

from __future__ import annotations

from explain_svc.config import ExplainSettings
from explain_svc.model import ExplainEngine
from explain_svc.servicer import ExplainerServicer
from vision.models.store import ModelStore
from vision.rpc.server import GrpcServer
from vision.rpc.service import ServiceSpec, start_model_service
from vision.v1 import explainer_pb2, explainer_pb2_grpc

SPEC = ServiceSpec(
    name="explain",
    grpc_service=explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name,
    add_servicer=explainer_pb2_grpc.add_ExplainerServicer_to_server,
)


def create_explain_server(settings: ExplainSettings) -> tuple[GrpcServer, ExplainEngine]:
    """Listen, load the stored models, report SERVING (see `start_model_service`)."""
    engine = ExplainEngine(ModelStore(settings.model_dir), settings)
    servicer = ExplainerServicer(engine, settings.max_top_k)
    return start_model_service(SPEC, settings, engine, servicer), engine
