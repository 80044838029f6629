"""POST /predict: classify an uploaded image (the original project's response shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.responses import ModelRef, Prediction, PredictResponse, RankedClass, Timing, error_responses
from gateway.values import image_file
from vision.v1 import classifier_pb2, common_pb2

router = APIRouter(tags=["classify"])
ERRORS = error_responses(
    {
        400: "Bad input: not an accepted image, or a bad option",
        404: "Unknown model or version",
        413: "Upload too large",
        429: "Overloaded: retry after Retry-After seconds",
        503: "classifier_svc unavailable",
        504: "classifier_svc did not answer in time",
    }
)


@router.post("/predict", summary="Classify an image", response_model=PredictResponse, responses=ERRORS)
async def predict(
    backends: BackendsDep,
    file: Annotated[UploadFile, image_file()],
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
    top_k: Annotated[int, Form(ge=1, le=100, description="How many classes in top5")] = 5,
) -> PredictResponse:
    request = classifier_pb2.ClassifyRequest(
        image=await file.read(), model=common_pb2.ModelRef(name=model, version=version), top_k=top_k
    )
    reply = await backends.call("classifier", backends.classifier.Classify, request)
    return PredictResponse(
        prediction=Prediction.from_proto(reply.classes[0]),
        top5=RankedClass.ranking(reply.classes),
        model=ModelRef.from_proto(reply.model),
        timing_ms=Timing.from_proto(reply.timing),
    )
