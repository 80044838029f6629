"""vision.v1.Detector over gRPC: validate, convert, call the engine. Errors map in `vision.rpc.status`."""

from __future__ import annotations

import time

import grpc

from detector_svc.model import Detection, DetectorEngine
from detector_svc.options import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET, DetectOptions
from vision.rpc.deadline import call_timeout
from vision.rpc.timing import model_ref, timing_message
from vision.v1 import detector_pb2, detector_pb2_grpc


def _threshold(value: float) -> float:
    # Proto floats are float32: 0.45 arrives as 0.449999988. Six decimals give back the value that was meant.
    return round(float(value), 6)


def options_from(request: detector_pb2.DetectRequest) -> DetectOptions:
    """The request's parameters, unset ones at their documented defaults."""
    return DetectOptions(
        conf=_threshold(request.conf) if request.HasField("conf") else DEFAULT_CONF,
        iou=_threshold(request.iou) if request.HasField("iou") else DEFAULT_IOU,
        max_det=request.max_det if request.HasField("max_det") else DEFAULT_MAX_DET,
        class_ids=tuple(request.class_ids),
        class_names=tuple(request.class_names),
        imgsz=request.imgsz if request.HasField("imgsz") else None,
        annotate=request.annotate,
    )


def response_from(result: Detection, start: float) -> detector_pb2.DetectResponse:
    return detector_pb2.DetectResponse(
        boxes=[
            detector_pb2.Box(
                x1=b.x1,
                y1=b.y1,
                x2=b.x2,
                y2=b.y2,
                width=b.width,
                height=b.height,
                class_id=b.class_id,
                class_name=b.class_name,
                confidence=b.confidence,
            )
            for b in result.boxes
        ],
        annotated_png=result.annotated_png,
        image_width=result.image_width,
        image_height=result.image_height,
        model=model_ref(result.answered),
        timing=timing_message(result.answered, start),
    )


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    def __init__(self, engine: DetectorEngine) -> None:
        self._engine = engine

    def Detect(
        self, request: detector_pb2.DetectRequest, context: grpc.ServicerContext
    ) -> detector_pb2.DetectResponse:
        start = time.perf_counter()
        result = self._engine.detect(
            request.image,
            options_from(request),
            model_name=request.model.name,
            version=request.model.version,
            timeout=call_timeout(
                context, self._engine.settings.default_deadline_s, self._engine.settings.max_deadline_s
            ),
        )
        return response_from(result, start)
