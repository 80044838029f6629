"""Health and model listing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.backends import BackendsDep
from vision.v1 import models_pb2

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="The gateway process is up (liveness)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health", summary="gRPC health of every downstream service (200 when all SERVING, else 503)")
async def health(backends: BackendsDep) -> JSONResponse:
    services = await backends.health()
    ok = all(status == "SERVING" for status in services.values())
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "services": services}, status_code=200 if ok else 503
    )


@router.get("/models", summary="Models the classifier can serve")
async def models(backends: BackendsDep, task: str = "") -> dict[str, Any]:
    reply = await backends.call(
        "classifier", backends.classifier_models.ListModels, models_pb2.ListModelsRequest(task=task)
    )
    return {
        "success": True,
        "default_model": reply.default_model,
        "models": [
            {
                "name": m.name,
                "version": m.version,
                "architecture": m.architecture,
                "task": m.task,
                "num_classes": m.num_classes,
                "class_names": list(m.class_names),
                "created_at": m.created_at.ToDatetime().isoformat() + "Z" if m.created_at.seconds else "",
                "metrics": dict(m.metrics),
                "source": m.source,
                "loaded": m.loaded,
            }
            for m in reply.models
        ],
    }
