"""The JSON bodies of the HTTP API as pydantic models, so /openapi.json describes each one exactly.

Each model that mirrors a protobuf reply has a ``from_proto`` that builds it. Field names are the API's
(``class`` is a Python keyword, hence ``class_`` with the alias ``class``); FastAPI writes the aliases.
The training bodies live next to the training routes (`gateway.train.responses`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vision.v1 import common_pb2, detector_pb2, models_pb2


class Body(BaseModel):
    """Base of every body: fields may be given by name (``class_``) or alias (``class``)."""

    model_config = ConfigDict(populate_by_name=True)


# -- errors --------------------------------------------------------------------------------------------------


class ErrorDetail(Body):
    code: str = Field(description="Machine-readable: invalid_argument, not_found, resource_exhausted ...")
    message: str = Field(description="What was wrong and what to do about it, for a person to read.")
    request_id: str | None = Field(
        None, description="The request's id (also the X-Request-ID header): quote it to find the logs."
    )


class ErrorBody(Body):
    """Every error the gateway returns (4xx and 5xx) has this body."""

    success: Literal[False] = False
    error: ErrorDetail


def error_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with its description and the `ErrorBody` model."""
    return {status: {"model": ErrorBody, "description": text} for status, text in descriptions.items()}


# -- parts shared by the image routes ------------------------------------------------------------------------


class ModelRef(Body):
    name: str
    version: str

    @classmethod
    def from_proto(cls, ref: common_pb2.ModelRef) -> ModelRef:
        return cls(name=ref.name, version=ref.version)


class Timing(Body):
    """Milliseconds spent in the service, and the size of the batch the request ran in."""

    decode: float
    queue: float
    inference: float
    server_total: float
    batch_size: int

    @classmethod
    def from_proto(cls, timing: common_pb2.Timing) -> Timing:
        return cls(
            decode=round(timing.decode_ms, 3),
            queue=round(timing.queue_ms, 3),
            inference=round(timing.inference_ms, 3),
            server_total=round(timing.total_ms, 3),
            batch_size=timing.batch_size,
        )


class ScoredClass(Body):
    class_: str = Field(alias="class", description="The class label.")
    class_id: int
    confidence: float = Field(description="Softmax probability in [0, 1].")


class Prediction(ScoredClass):
    confidence_percent: float

    @classmethod
    def from_proto(cls, best: common_pb2.ScoredClass) -> Prediction:
        return cls(
            class_=best.label,
            class_id=best.class_id,
            confidence=best.score,
            confidence_percent=round(best.score * 100, 2),
        )


class RankedClass(Body):
    rank: int = Field(description="1 for the most likely class.")
    class_: str = Field(alias="class", description="The class label.")
    class_id: int
    confidence: float = Field(description="Softmax probability in [0, 1].")

    @classmethod
    def ranking(cls, classes: Sequence[common_pb2.ScoredClass]) -> list[RankedClass]:
        return [
            cls(rank=rank, class_=c.label, class_id=c.class_id, confidence=c.score)
            for rank, c in enumerate(classes, start=1)
        ]


def png_data_uri(png: bytes) -> str:
    return data_uri("image/png", png)


def data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")


# -- POST /predict, /explain, /predict/gradcam ---------------------------------------------------------------


class PredictResponse(Body):
    success: Literal[True] = True
    prediction: Prediction
    top5: list[RankedClass] = Field(description="The top_k classes, most likely first.")
    model: ModelRef
    timing_ms: Timing


class TargetClass(ScoredClass):
    """The class the map explains."""


class ExplainResponse(Body):
    success: Literal[True] = True
    prediction: Prediction
    top5: list[RankedClass]
    method: str = Field(description="cam | gradcam | gradcampp")
    layer: str = Field(description="The module whose activations were used.")
    target_class: TargetClass
    heatmap: str = Field(description="8-bit grayscale PNG data URI at model-input resolution.")
    overlay_image: str = Field(
        description="JPEG (default) or PNG data URI, as overlay_format asks: the coloured map over the "
        "uploaded photo, its longer side at most overlay_max_side."
    )
    model: ModelRef
    timing_ms: Timing


class Gradcam(Body):
    heatmap_image: str = Field(
        description="Data URI (JPEG, the service's default overlay format): the Grad-CAM overlay on the "
        "uploaded photo."
    )
    description: str


class GradcamResponse(Body):
    success: Literal[True] = True
    prediction: Prediction
    top5: list[RankedClass]
    gradcam: Gradcam
    model: ModelRef
    timing_ms: Timing


# -- POST /detect --------------------------------------------------------------------------------------------


class BoundingBox(Body):
    """Original-image pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    width: float
    height: float


class Detection(Body):
    class_: str = Field(alias="class")
    class_id: int
    confidence: float
    bbox: BoundingBox

    @classmethod
    def from_proto(cls, box: detector_pb2.Box) -> Detection:
        bbox = BoundingBox(x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2, width=box.width, height=box.height)
        return cls(class_=box.class_name, class_id=box.class_id, confidence=box.confidence, bbox=bbox)


class ImageSize(Body):
    width: int
    height: int


class DetectResponse(Body):
    success: Literal[True] = True
    num_objects: int
    detections: list[Detection] = Field(description="Highest confidence first.")
    annotated_image: str | None = Field(
        description="PNG data URI with the boxes drawn; null: annotate=false."
    )
    image: ImageSize
    model: ModelRef
    timing_ms: Timing

    @classmethod
    def from_proto(cls, reply: detector_pb2.DetectResponse) -> DetectResponse:
        return cls(
            num_objects=len(reply.boxes),
            detections=[Detection.from_proto(b) for b in reply.boxes],
            annotated_image=png_data_uri(reply.annotated_png) if reply.annotated_png else None,
            image=ImageSize(width=reply.image_width, height=reply.image_height),
            model=ModelRef.from_proto(reply.model),
            timing_ms=Timing.from_proto(reply.timing),
        )


# -- GET /healthz, /health, /models --------------------------------------------------------------------------


class Liveness(Body):
    status: Literal["ok"] = "ok"


class Health(Body):
    status: Literal["ok", "degraded"] = Field(description="ok when every service is SERVING.")
    services: dict[str, str] = Field(
        description="Each deployed service's gRPC health: SERVING, NOT_SERVING, UNAVAILABLE ..."
    )


class ModelInfo(Body):
    name: str
    version: str
    architecture: str
    task: str
    num_classes: int
    class_names: list[str]
    created_at: str = Field(description="ISO 8601 UTC ('...Z'); empty when unknown.")
    metrics: dict[str, float]
    source: str
    loaded: bool = Field(description="The service holds this version in memory, ready to serve.")
    load_error: str = Field(description="Why the service could not load this version; empty otherwise.")
    runtime: str = Field(
        "", description="What runs it while loaded: torch, openvino or onnxruntime; empty when not loaded."
    )
    precision: str = Field("", description="Its inference precision while loaded: fp32, bf16 or fp16.")
    runtime_fallback: str = Field(
        "", description="Why the configured runtime does not serve it (torch does); empty when it does."
    )
    pinned: bool = Field(
        False, description="An admin pinned this version: requests naming no version get it, not the newest."
    )

    @classmethod
    def from_proto(cls, m: models_pb2.ModelVersionInfo) -> ModelInfo:
        return cls(
            name=m.name,
            version=m.version,
            architecture=m.architecture,
            task=m.task,
            num_classes=m.num_classes,
            class_names=list(m.class_names),
            created_at=m.created_at.ToDatetime().isoformat() + "Z" if m.created_at.seconds else "",
            metrics=dict(m.metrics),
            source=m.source,
            loaded=m.loaded,
            load_error=m.load_error,
            runtime=m.runtime,
            precision=m.precision,
            runtime_fallback=m.runtime_fallback,
            pinned=m.pinned,
        )


class ModelsResponse(Body):
    success: Literal[True] = True
    default_model: str
    default_source: str = Field(
        "",
        description="Where the default comes from: store (`vision models set-default`), setting "
        "(VISION_<SVC>_DEFAULT_MODEL) or automatic; empty when there is no default.",
    )
    models: list[ModelInfo]

    @classmethod
    def from_proto(cls, reply: models_pb2.ListModelsResponse) -> ModelsResponse:
        return cls(
            default_model=reply.default_model,
            default_source=reply.default_source,
            models=[ModelInfo.from_proto(m) for m in reply.models],
        )


# -- the model lifecycle (admins) ----------------------------------------------------------------------------


class ModelStateInfo(Body):
    """A model's lifecycle state in the store, after the change; every service follows it within its poll
    interval."""

    name: str
    task: str
    versions: list[str] = Field(description="Oldest first.")
    pinned_version: str = Field(description="Empty when none is pinned.")
    served_version: str = Field(description="What requests naming no version get: pinned, else newest.")
    default: bool = Field(description="The default model of its task (requests naming no model get it).")

    @classmethod
    def from_proto(cls, m: models_pb2.ModelState) -> ModelStateInfo:
        return cls(
            name=m.name,
            task=m.task,
            versions=list(m.versions),
            pinned_version=m.pinned_version,
            served_version=m.served_version,
            default=m.is_default,
        )


class ModelStateResponse(Body):
    success: Literal[True] = True
    model: ModelStateInfo
