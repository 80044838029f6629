"""POST /predict: classify an uploaded image (the original project's response shape)."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from fastapi import APIRouter, File, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.errors import ApiError, from_rpc_error
from vision.v1 import classifier_pb2, common_pb2

router = APIRouter(tags=["classify"])


async def read_upload(file: UploadFile) -> bytes:
    """The uploaded bytes (the body-size middleware has already bounded them)."""
    data = await file.read()
    if not data:
        raise ApiError(
            400, "invalid_argument", "the file is empty (0 bytes): send a JPEG, PNG, WebP or BMP image"
        )
    return data


def model_json(ref: common_pb2.ModelRef) -> dict[str, str]:
    return {"name": ref.name, "version": ref.version}


def timing_json(timing: common_pb2.Timing) -> dict[str, Any]:
    return {
        "decode": round(timing.decode_ms, 3),
        "queue": round(timing.queue_ms, 3),
        "inference": round(timing.inference_ms, 3),
        "server_total": round(timing.total_ms, 3),
        "batch_size": timing.batch_size,
    }


@router.post(
    "/predict",
    summary="Classify an image",
    responses={
        400: {"description": "Bad input"},
        404: {"description": "Unknown model"},
        413: {"description": "Upload too large"},
        429: {"description": "Overloaded"},
    },
)
async def predict(
    backends: BackendsDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP image")],
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
    top_k: Annotated[int, Form(ge=1, le=100, description="How many classes in top5")] = 5,
) -> dict[str, Any]:
    request = classifier_pb2.ClassifyRequest(
        image=await read_upload(file), model=common_pb2.ModelRef(name=model, version=version), top_k=top_k
    )
    try:
        reply = await backends.classifier.Classify(request, timeout=backends.settings.timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, "classifier", backends.settings.retry_after_s) from exc
    best = reply.classes[0]
    return {
        "success": True,
        "prediction": {
            "class": best.label,
            "class_id": best.class_id,
            "confidence": best.score,
            "confidence_percent": round(best.score * 100, 2),
        },
        "top5": [
            {"rank": rank, "class": c.label, "class_id": c.class_id, "confidence": c.score}
            for rank, c in enumerate(reply.classes, start=1)
        ],
        "model": model_json(reply.model),
        "timing_ms": timing_json(reply.timing),
    }
