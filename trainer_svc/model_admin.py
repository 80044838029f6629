"""vision.v1.ModelAdmin over gRPC: pin, unpin, roll back, delete, set the default, for admins. The trainer
serves it because it has the model store read-write (the model services mount it read-only); the work is
`vision.models.admin`'s, the errors are mapped by `vision.rpc.status`."""

from __future__ import annotations

import grpc

from trainer_svc.access import Access
from vision.models.admin import ModelAdmin, ModelState
from vision.models.store import ModelStore
from vision.security.roles import Role
from vision.v1 import models_pb2, models_pb2_grpc

SERVICE_NAME = models_pb2.DESCRIPTOR.services_by_name["ModelAdmin"].full_name


def state_proto(state: ModelState) -> models_pb2.ModelState:
    return models_pb2.ModelState(
        name=state.name,
        task=state.task,
        versions=state.versions,
        pinned_version=state.pinned,
        served_version=state.served,
        is_default=state.is_default,
    )


class ModelAdminServicer(models_pb2_grpc.ModelAdminServicer):
    def __init__(self, store: ModelStore, access: Access) -> None:
        self._admin = ModelAdmin(store)
        self._access = access

    def _admin_caller(self, context: grpc.ServicerContext, what: str) -> str:
        """The calling admin's name; PERMISSION_DENIED for anyone else."""
        caller = self._access.caller(context)
        Access.require(caller, Role.ADMIN, what)
        return caller.name

    def PinModel(
        self, request: models_pb2.PinModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "pinning a model version")
        return state_proto(self._admin.pin(request.name, request.version, by))

    def UnpinModel(
        self, request: models_pb2.UnpinModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "unpinning a model")
        return state_proto(self._admin.unpin(request.name, by))

    def RollbackModel(
        self, request: models_pb2.RollbackModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "rolling a model back")
        return state_proto(self._admin.rollback(request.name, by))

    def DeleteModelVersion(
        self, request: models_pb2.DeleteModelVersionRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "deleting a model version")
        return state_proto(self._admin.delete(request.name, request.version, by))

    def SetDefaultModel(
        self, request: models_pb2.SetDefaultModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "setting the default model")
        return state_proto(self._admin.set_default(request.name, by))

    def UnsetDefaultModel(
        self, request: models_pb2.UnsetDefaultModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.ModelState:
        by = self._admin_caller(context, "unsetting the default model")
        return state_proto(self._admin.unset_default(request.name, by))


def add_model_admin(server: grpc.Server, store: ModelStore, access: Access) -> str:
    """Serve ModelAdmin on ``server``; returns the service's full name (for health and reflection)."""
    models_pb2_grpc.add_ModelAdminServicer_to_server(ModelAdminServicer(store, access), server)
    return SERVICE_NAME
