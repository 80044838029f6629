"""Health and model listing."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.backends import BackendsDep
from gateway.errors import ApiError
from gateway.responses import Health, Liveness, ModelInfo, ModelsResponse, error_responses
from vision.v1 import models_pb2

router = APIRouter(tags=["system"])
DETECTION = "detection"


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
    summary="Stored models, each as the service that serves it sees it: loaded or not (and why), runtime",
    response_model=ModelsResponse,
    responses=error_responses(
        {503: "classifier_svc unavailable", 504: "classifier_svc did not answer in time"}
    ),
)
async def models(backends: BackendsDep, task: str = "") -> ModelsResponse:
    """The classifier's catalog (every stored model, the classification default); detection models as the
    detector reports them (loaded, runtime, precision) when one is deployed. Without a classifier, the
    detector's catalog alone."""
    deployed = backends.channels
    primary = "classifier" if "classifier" in deployed or "detector" not in deployed else "detector"
    request = models_pb2.ListModelsRequest(task=task)
    reply = await backends.call(primary, backends.catalog(primary).ListModels, request)
    listed = ModelsResponse.from_proto(reply)
    if primary == "detector" or "detector" not in deployed or task not in ("", DETECTION):
        return listed
    try:
        detection = await backends.call(
            "detector", backends.catalog("detector").ListModels, models_pb2.ListModelsRequest(task=DETECTION)
        )
    except ApiError:  # the detector is down: its models as the classifier sees them (stored, not loaded)
        return listed
    others = [m for m in listed.models if m.task != DETECTION]
    listed.models = others + [ModelInfo.from_proto(m) for m in detection.models]
    return listed
