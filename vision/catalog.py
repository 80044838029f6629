"""The ModelCatalog service: what the model store holds, as one service sees it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vision.rpc_errors import maps_errors
from vision.store import ModelStore, ModelVersion
from vision.v1 import models_pb2, models_pb2_grpc


def version_info(version: ModelVersion, loaded: bool) -> models_pb2.ModelVersionInfo:
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
    )


class ModelCatalogServicer(models_pb2_grpc.ModelCatalogServicer):
    """Lists the store's versions; ``loaded()`` tells which are in this service's memory."""

    def __init__(
        self, store: ModelStore, loaded: Callable[[], set[tuple[str, str]]], default_model: Callable[[], str]
    ) -> None:
        self._store = store
        self._loaded = loaded
        self._default_model = default_model

    @maps_errors
    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        loaded = self._loaded()
        versions = [v for v in self._store.list() if not request.task or v.metadata.task == request.task]
        try:
            default = self._default_model()
        except Exception:
            default = ""
        return models_pb2.ListModelsResponse(
            models=[version_info(v, v.key in loaded) for v in versions], default_model=default
        )
