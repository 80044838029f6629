"""POST /explain and POST /predict/gradcam: class activation maps over the uploaded photo."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.errors import ApiError
from gateway.shapes import model_json, png_data_uri, prediction_json, read_upload, timing_json, top_json
from vision.v1 import common_pb2, explainer_pb2

router = APIRouter(tags=["explain"])
E = TypeVar("E")

METHODS = {
    "cam": explainer_pb2.CAM_METHOD_CAM,
    "gradcam": explainer_pb2.CAM_METHOD_GRAD_CAM,
    "gradcampp": explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
}
METHOD_NAMES = {v: k for k, v in METHODS.items()}
COLORMAPS = {
    "jet": explainer_pb2.COLORMAP_JET,
    "viridis": explainer_pb2.COLORMAP_VIRIDIS,
    "inferno": explainer_pb2.COLORMAP_INFERNO,
    "turbo": explainer_pb2.COLORMAP_TURBO,
    "gray": explainer_pb2.COLORMAP_GRAY,
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input"},
    404: {"description": "Unknown model"},
    413: {"description": "Upload too large"},
    429: {"description": "Overloaded"},
    503: {"description": "explain_svc unavailable or not deployed"},
}


def _choice(field: str, value: str, accepted: Mapping[str, E]) -> E:
    if value not in accepted:
        raise ApiError(400, "invalid_argument", f"unknown {field} {value!r}; accepted: {', '.join(accepted)}")
    return accepted[value]


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
) -> explainer_pb2.ExplainRequest:
    """``target_class`` is a class index ("281") or a label ("tabby"); empty: the predicted class."""
    request = explainer_pb2.ExplainRequest(
        image=image,
        model=common_pb2.ModelRef(name=model, version=version),
        method=_choice("method", method, METHODS),
        layer=layer,
        alpha=alpha,
        colormap=_choice("colormap", colormap, COLORMAPS),
        top_k=top_k,
    )
    target = target_class.strip()
    if target.lstrip("-").isdigit():
        request.target_class_id = int(target)
    elif target:
        request.target_label = target
    return request


async def explain_upload(
    backends: BackendsDep, request: explainer_pb2.ExplainRequest
) -> explainer_pb2.ExplainResponse:
    reply: explainer_pb2.ExplainResponse = await backends.call("explain", backends.explainer.Explain, request)
    return reply


@router.post(
    "/explain", summary="Explain a classification with CAM, Grad-CAM or Grad-CAM++", responses=ERRORS
)
async def explain(
    backends: BackendsDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP image")],
    method: Annotated[str, Form(description="cam | gradcam | gradcampp")] = "gradcam",
    target_class: Annotated[str, Form(description="Class index or label; empty: the predicted class")] = "",
    layer: Annotated[str, Form(description="Module name, e.g. layer3; empty: the last conv block")] = "",
    alpha: Annotated[float, Form(ge=0.0, le=1.0, description="Heatmap opacity in the overlay")] = 0.5,
    colormap: Annotated[str, Form(description="jet | viridis | inferno | turbo | gray")] = "jet",
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> dict[str, Any]:
    """``heatmap`` is the raw map at model-input resolution (224x224 by default) as an 8-bit grayscale PNG,
    value = round(255 * h) for h in [0, 1]; ``overlay_image`` is the coloured map over the uploaded photo,
    placed on the region the model saw (the centre crop)."""
    request = build_request(
        await read_upload(file),
        method=method,
        target_class=target_class,
        layer=layer,
        alpha=alpha,
        colormap=colormap,
        model=model,
        version=version,
    )
    reply = await explain_upload(backends, request)
    return {
        "success": True,
        "prediction": prediction_json(reply.prediction),
        "top5": top_json(reply.top_k),
        "method": METHOD_NAMES[reply.method],
        "layer": reply.layer,
        "target_class": {
            "class": reply.target.label,
            "class_id": reply.target.class_id,
            "confidence": reply.target.score,
        },
        "heatmap": png_data_uri(reply.heatmap_png),
        "overlay_image": png_data_uri(reply.overlay_png),
        "model": model_json(reply.model),
        "timing_ms": timing_json(reply.timing),
    }


@router.post("/predict/gradcam", summary="Classify and show the Grad-CAM overlay", responses=ERRORS)
async def predict_gradcam(
    backends: BackendsDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP image")],
    model: Annotated[str, Form(description="Model name; empty: the default model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> dict[str, Any]:
    """The original project's shape; ``gradcam.heatmap_image`` is the overlay on the uploaded photo."""
    request = build_request(
        await read_upload(file),
        method="gradcam",
        target_class="",
        layer="",
        alpha=0.5,
        colormap="jet",
        model=model,
        version=version,
    )
    reply = await explain_upload(backends, request)
    best = reply.prediction
    return {
        "success": True,
        "prediction": prediction_json(best),
        "top5": top_json(reply.top_k),
        "gradcam": {
            "heatmap_image": png_data_uri(reply.overlay_png),
            "description": (
                f"Grad-CAM at {reply.layer}: warm colours mark the regions that most increased the score of "
                f"'{best.label}' ({best.score * 100:.1f}%)."
            ),
        },
        "model": model_json(reply.model),
        "timing_ms": timing_json(reply.timing),
    }
