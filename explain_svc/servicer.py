"""vision.v1.Explainer over gRPC: validate, convert, call the engine. Errors map in `vision.rpc.status`."""

from __future__ import annotations

import time

import grpc

from explain_svc.model import ExplainEngine, ExplainOptions
from explain_svc.overlay import DEFAULT_ALPHA
from vision.choices import CAM_METHODS, COLORMAPS, OVERLAY_FORMATS, overlay_field
from vision.errors import InvalidArgument
from vision.rpc.deadline import call_timeout
from vision.rpc.timing import model_ref, timing_message
from vision.v1 import common_pb2, explainer_pb2, explainer_pb2_grpc


def _scored(class_id: int, label: str, score: float) -> common_pb2.ScoredClass:
    return common_pb2.ScoredClass(class_id=class_id, label=label, score=score)


class ExplainerServicer(explainer_pb2_grpc.ExplainerServicer):
    def __init__(self, engine: ExplainEngine, max_top_k: int = 100) -> None:
        self._engine = engine
        self._max_top_k = max_top_k

    @staticmethod
    def _options(request: explainer_pb2.ExplainRequest, top_k: int) -> ExplainOptions:
        which = request.WhichOneof("target")
        target: int | str | None = None if which is None else getattr(request, which)
        return ExplainOptions(
            method=CAM_METHODS.from_enum(request.method),
            layer=request.layer,
            target=target,
            colormap=COLORMAPS.from_enum(request.colormap),
            alpha=request.alpha if request.HasField("alpha") else DEFAULT_ALPHA,
            top_k=top_k,
            overlay_side=request.overlay_max_side,
            # unset: "", the service's setting
            overlay_format=(
                OVERLAY_FORMATS.from_enum(request.overlay_format) if request.overlay_format else ""
            ),
        )

    def Explain(
        self, request: explainer_pb2.ExplainRequest, context: grpc.ServicerContext
    ) -> explainer_pb2.ExplainResponse:
        start = time.perf_counter()
        top_k = request.top_k or 5
        if not 1 <= top_k <= self._max_top_k:
            raise InvalidArgument(f"top_k must be between 1 and {self._max_top_k}, got {request.top_k}")
        result = self._engine.explain(
            request.image,
            self._options(request, top_k),
            model_name=request.model.name,
            version=request.model.version,
            timeout=call_timeout(
                context, self._engine.settings.default_deadline_s, self._engine.settings.max_deadline_s
            ),
        )
        response = explainer_pb2.ExplainResponse(
            prediction=_scored(*result.top[0]),
            top_k=[_scored(*c) for c in result.top],
            target=_scored(*result.target),
            method=explainer_pb2.CamMethod.Name(CAM_METHODS.to_enum(result.method)),
            layer=result.layer,
            heatmap_png=result.heatmap_png,
            model=model_ref(result.answered),
            timing=timing_message(result.answered, start),
        )
        setattr(response, overlay_field(result.overlay_format), result.overlay)
        return response
