"""Health and model listing."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.backends import BackendsDep
from gateway.responses import Health, Liveness, ModelsResponse, error_responses
from vision.v1 import models_pb2

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="The gateway process is up (liveness)", response_model=Liveness)
async def healthz() -> Liveness:
    return Liveness()


@router.get(
    "/health",
    summary="gRPC health of every downstream service (200 when all SERVING, else 503)",
    response_model=Health,
    responses={503: {"model": Health, "description": "At least one service is not SERVING"}},
)
async def health(backends: BackendsDep, response: Response) -> Health:
    services = await backends.health()
    ok = all(status == "SERVING" for status in services.values())
    response.status_code = 200 if ok else 503
    return Health(status="ok" if ok else "degraded", services=services)


@router.get(
    "/models",
    summary="Models the classifier can serve, each with whether it is loaded (and why not)",
    response_model=ModelsResponse,
    responses=error_responses(
        {503: "classifier_svc unavailable", 504: "classifier_svc did not answer in time"}
    ),
)
async def models(backends: BackendsDep, task: str = "") -> ModelsResponse:
    reply = await backends.call(
        "classifier", backends.classifier_models.ListModels, models_pb2.ListModelsRequest(task=task)
    )
    return ModelsResponse.from_proto(reply)
