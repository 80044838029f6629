"""The model lifecycle over HTTP, for admins: pin a version, unpin, roll back, delete a version, set or unset
the default model. trainer_svc does the work (ModelAdmin: it has the model store read-write) and refuses
anyone but an admin (403); every model service follows within its poll interval."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import Field, field_validator

from gateway.backends import Backends, BackendsDep
from gateway.responses import Body, ModelStateInfo, ModelStateResponse, error_responses
from vision.models.store import MODEL_NAME_PATTERN, VERSION_PATTERN
from vision.v1 import models_pb2, models_pb2_grpc

router = APIRouter(tags=["models"])
ERRORS = error_responses(
    {
        400: "A bad model name or version",
        403: "The caller is not an admin",
        404: "No such model or version",
        409: "Refused in this state: the version is pinned or the model's only one; nothing to roll back to",
        503: "trainer_svc unavailable or not deployed",
    }
)
ModelName = Annotated[str, Path(pattern=MODEL_NAME_PATTERN, max_length=64, description="A model's name")]
Version = Annotated[str, Path(pattern=VERSION_PATTERN, description="A version number, e.g. 3")]


class PinRequest(Body):
    version: str = Field(pattern=VERSION_PATTERN, description='The version to serve, e.g. "3" (or 3).')

    @field_validator("version", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _admin(backends: Backends) -> models_pb2_grpc.ModelAdminStub:
    """ModelAdmin on trainer_svc; 503 when no trainer is deployed."""
    return models_pb2_grpc.ModelAdminStub(backends.channel("trainer"))


def _answer(reply: models_pb2.ModelState) -> ModelStateResponse:
    return ModelStateResponse(model=ModelStateInfo.from_proto(reply))


@router.post(
    "/models/{name}/pin",
    summary="Serve this version to requests naming no version, in every service (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def pin(name: ModelName, body: PinRequest, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.PinModelRequest(name=name, version=body.version)
    return _answer(await backends.call("trainer", _admin(backends).PinModel, request))


@router.post(
    "/models/{name}/unpin",
    summary="Serve the newest version again (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def unpin(name: ModelName, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.UnpinModelRequest(name=name)
    return _answer(await backends.call("trainer", _admin(backends).UnpinModel, request))


@router.post(
    "/models/{name}/rollback",
    summary="Pin the version before the one served now (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def rollback(name: ModelName, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.RollbackModelRequest(name=name)
    return _answer(await backends.call("trainer", _admin(backends).RollbackModel, request))


@router.delete(
    "/models/{name}/versions/{version}",
    summary="Delete a version; refused for the pinned and the only one (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def delete_version(name: ModelName, version: Version, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.DeleteModelVersionRequest(name=name, version=version)
    return _answer(await backends.call("trainer", _admin(backends).DeleteModelVersion, request))


@router.post(
    "/models/{name}/default",
    summary="Make this the default model of its task, in every service (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def set_default(name: ModelName, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.SetDefaultModelRequest(name=name)
    return _answer(await backends.call("trainer", _admin(backends).SetDefaultModel, request))


@router.delete(
    "/models/{name}/default",
    summary="Stop this model being its task's default (admins)",
    response_model=ModelStateResponse,
    responses=ERRORS,
)
async def unset_default(name: ModelName, backends: BackendsDep) -> ModelStateResponse:
    request = models_pb2.UnsetDefaultModelRequest(name=name)
    return _answer(await backends.call("trainer", _admin(backends).UnsetDefaultModel, request))
