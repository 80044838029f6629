"""POST /explain and POST /predict/gradcam: class activation maps over the uploaded photo."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.errors import invalid_argument
from gateway.responses import (
    ExplainResponse,
    Gradcam,
    GradcamResponse,
    ModelRef,
    Prediction,
    RankedClass,
    TargetClass,
    Timing,
    data_uri,
    error_responses,
    png_data_uri,
)
from gateway.values import INT32, image_file, looks_like_integer, parse_int32
from vision.choices import (
    CAM_METHODS,
    COLORMAPS,
    OVERLAY_FORMATS,
    OVERLAY_MEDIA_TYPES,
    Choices,
    reply_overlay,
)
from vision.errors import InvalidArgument
from vision.v1 import common_pb2, explainer_pb2

router = APIRouter(tags=["explain"])
ERRORS = error_responses(
    {
        400: "Bad input: not an accepted image, or a bad option",
        404: "Unknown model or version",
        413: "Upload too large",
        429: "Overloaded: retry after Retry-After seconds",
        503: "explain_svc unavailable or not deployed",
        504: "explain_svc did not answer in time",
    }
)


def _enum(choices: Choices, name: str) -> int:
    """The proto enum value of a form's option name; 400 naming the accepted ones otherwise."""
    try:
        return choices.to_enum(name)
    except InvalidArgument as exc:
        raise invalid_argument(exc) from None


def build_request(
    image: bytes,
    *,
    method: str,
    target_class: str,
    layer: str,
    alpha: float,
    colormap: str,
    model: str,
    version: str,
    top_k: int = 5,
    overlay_max_side: int = 0,
    overlay_format: str = "",
) -> explainer_pb2.ExplainRequest:
    """``target_class``: a class index ("281", an int32) or a label ("tabby"); empty: the predicted class."""
    request = explainer_pb2.ExplainRequest(
        image=image,
        model=common_pb2.ModelRef(name=model, version=version),
        method=_enum(CAM_METHODS, method),  # type: ignore[arg-type]
        layer=layer,
        alpha=alpha,
        colormap=_enum(COLORMAPS, colormap),  # type: ignore[arg-type]
        top_k=top_k,
        overlay_max_side=overlay_max_side,
        # empty: unset, the service's setting
        overlay_format=_enum(OVERLAY_FORMATS, overlay_format) if overlay_format else 0,  # type: ignore[arg-type]
    )
    target = target_class.strip()
    if looks_like_integer(target):
        request.target_class_id = parse_int32("target_class", target)
    elif target:
        request.target_label = target
    return request


def overlay_data_uri(reply: explainer_pb2.ExplainResponse) -> str:
    """The overlay as a data URI of the media type it was encoded in."""
    overlay_format, overlay = reply_overlay(reply)
    return data_uri(OVERLAY_MEDIA_TYPES[overlay_format], overlay)


async def explain_upload(
    backends: BackendsDep, request: explainer_pb2.ExplainRequest
) -> explainer_pb2.ExplainResponse:
    reply: explainer_pb2.ExplainResponse = await backends.call("explain", backends.explainer.Explain, request)
    return reply


@router.post(
    "/explain",
    summary="Explain a classification with CAM, Grad-CAM or Grad-CAM++",
    response_model=ExplainResponse,
    responses=ERRORS,
)
async def explain(
    backends: BackendsDep,
    file: Annotated[UploadFile, image_file()],
    method: Annotated[
        str, Form(description="The CAM method", json_schema_extra={"enum": list(CAM_METHODS.names)})
    ] = CAM_METHODS.default,
    target_class: Annotated[str, Form(description="Class index or label; empty: the predicted class")] = "",
    layer: Annotated[str, Form(description="Module name, e.g. layer3; empty: the last conv block")] = "",
    alpha: Annotated[float, Form(ge=0.0, le=1.0, description="Heatmap opacity in the overlay")] = 0.5,
    colormap: Annotated[
        str, Form(description="Colours of the overlay", json_schema_extra={"enum": list(COLORMAPS.names)})
    ] = COLORMAPS.default,
    overlay_max_side: Annotated[
        int,
        Form(
            ge=0,
            le=INT32.stop - 1,
            description="Longest side of overlay_image in pixels; 0: the service's default (640). At most "
            "VISION_EXPLAIN_MAX_OVERLAY_SIDE (2048); a longer photo is shrunk by a whole factor to fit",
        ),
    ] = 0,
    overlay_format: Annotated[
        str,
        Form(
            description="Encoding of overlay_image; empty: the service's default (jpeg)",
            json_schema_extra={"enum": ["", *OVERLAY_FORMATS.names]},
        ),
    ] = "",
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> ExplainResponse:
    """``heatmap`` is the raw map at model-input resolution (224x224 by default) as an 8-bit grayscale PNG,
    value = round(255 * h) for h in [0, 1]; ``overlay_image`` is the coloured map over the uploaded photo,
    placed on the region the model saw (the centre crop)."""
    request = build_request(
        await file.read(),
        method=method,
        target_class=target_class,
        layer=layer,
        alpha=alpha,
        colormap=colormap,
        model=model,
        version=version,
        overlay_max_side=overlay_max_side,
        overlay_format=overlay_format,
    )
    reply = await explain_upload(backends, request)
    target = reply.target
    return ExplainResponse(
        prediction=Prediction.from_proto(reply.prediction),
        top5=RankedClass.ranking(reply.top_k),
        method=CAM_METHODS.from_enum(reply.method),
        layer=reply.layer,
        target_class=TargetClass(class_=target.label, class_id=target.class_id, confidence=target.score),
        heatmap=png_data_uri(reply.heatmap_png),
        overlay_image=overlay_data_uri(reply),
        model=ModelRef.from_proto(reply.model),
        timing_ms=Timing.from_proto(reply.timing),
    )


@router.post(
    "/predict/gradcam",
    summary="Classify and show the Grad-CAM overlay",
    response_model=GradcamResponse,
    responses=ERRORS,
)
async def predict_gradcam(
    backends: BackendsDep,
    file: Annotated[UploadFile, image_file()],
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> GradcamResponse:
    """The original project's shape; ``gradcam.heatmap_image`` is the overlay on the uploaded photo."""
    request = build_request(
        await file.read(),
        method="gradcam",
        target_class="",
        layer="",
        alpha=0.5,
        colormap=COLORMAPS.default,
        model=model,
        version=version,
    )
    reply = await explain_upload(backends, request)
    best = reply.prediction
    description = (
        f"Grad-CAM at {reply.layer}: warm colours mark the regions that most increased the score of "
        f"'{best.label}' ({best.score * 100:.1f}%)."
    )
    return GradcamResponse(
        prediction=Prediction.from_proto(best),
        top5=RankedClass.ranking(reply.top_k),
        gradcam=Gradcam(heatmap_image=overlay_data_uri(reply), description=description),
        model=ModelRef.from_proto(reply.model),
        timing_ms=Timing.from_proto(reply.timing),
    )
