"""POST /predict: classify an uploaded image (the original project's response shape)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.shapes import model_json, prediction_json, read_upload, timing_json, top_json
from vision.v1 import classifier_pb2, common_pb2

router = APIRouter(tags=["classify"])


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
    reply = await backends.call("classifier", backends.classifier.Classify, request)
    return {
        "success": True,
        "prediction": prediction_json(reply.classes[0]),
        "top5": top_json(reply.classes),
        "model": model_json(reply.model),
        "timing_ms": timing_json(reply.timing),
    }
