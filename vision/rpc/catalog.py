"""The ModelCatalog service: what the model store holds, as one service sees it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vision.errors import VisionError
from vision.models.store import ModelVersion
from vision.serving.registry import ModelRegistry
from vision.v1 import models_pb2, models_pb2_grpc


def version_info(
    version: ModelVersion,
    loaded: bool,
    load_error: str = "",
    model: object = None,
    pinned: bool = False,
) -> models_pb2.ModelVersionInfo:
    """The catalog entry of ``version``; ``loaded`` and ``load_error`` as the answering service sees them,
    how ``model`` (the loaded one, if any) runs when it says (a ``served_as`` `ServedAs`), and whether an
    admin pinned it."""
    served = getattr(model, "served_as", None)
    meta = version.metadata
    created = Timestamp()
    if meta.created_at:
        created.FromDatetime(datetime.fromisoformat(meta.created_at))
    return models_pb2.ModelVersionInfo(
        name=version.name,
        version=version.version,
        architecture=meta.architecture,
        task=meta.task,
        num_classes=meta.num_classes,
        class_names=meta.class_names,
        input_size=meta.input_size,
        created_at=created,
        metrics=meta.metrics,
        source=str(meta.provenance.get("source", "")),
        loaded=loaded,
        load_error=load_error,
        runtime=getattr(served, "runtime", ""),
        precision=getattr(served, "precision", ""),
        runtime_fallback=getattr(served, "fallback", ""),
        pinned=pinned,
    )


class ModelCatalogServicer(models_pb2_grpc.ModelCatalogServicer):
    """Lists the store's versions, marking those loaded in this service's registry, why any failed, and the
    pinned ones."""

    def __init__(self, registry: ModelRegistry[Any]) -> None:
        self._registry = registry

    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        loaded = self._registry.loaded_models()
        failed = self._registry.load_errors()
        store = self._registry.store
        versions = [v for v in store.list() if not request.task or v.metadata.task == request.task]
        pins = store.lifecycle.pins()
        try:
            default = self._registry.resolve_name("")
        except VisionError:
            default = ""
        return models_pb2.ListModelsResponse(
            models=[
                version_info(
                    v,
                    loaded=v.key in loaded,
                    load_error=failed.get(v.key, ""),
                    model=loaded.get(v.key),
                    pinned=pins.get(v.name) == v.version,
                )
                for v in versions
            ],
            default_model=default,
            default_source=self._registry.default_source() if default else "",
        )


SERVICE_NAME = models_pb2.DESCRIPTOR.services_by_name["ModelCatalog"].full_name


def add_model_catalog(server: grpc.Server, registry: ModelRegistry[Any]) -> str:
    """Serve ModelCatalog for ``registry`` on ``server``; returns the service's full name."""
    models_pb2_grpc.add_ModelCatalogServicer_to_server(ModelCatalogServicer(registry), server)
    return SERVICE_NAME
