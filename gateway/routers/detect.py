"""POST /detect: YOLO object detection on an uploaded image (the original project's response shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.responses import DetectResponse, error_responses
from gateway.values import INT32, image_file, int32, looks_like_integer, parse_int32
from vision.v1 import common_pb2, detector_pb2

router = APIRouter(tags=["detect"])


def parse_classes(classes: str) -> tuple[list[int], list[str]]:
    """'0, 2, person' -> ([0, 2], ['person']): integers are class ids, anything else a class name."""
    ids: list[int] = []
    names: list[str] = []
    for token in (t.strip() for t in classes.split(",")):
        if looks_like_integer(token):
            ids.append(parse_int32("classes", token))
        elif token:
            names.append(token)
    return ids, names


def build_request(
    image: bytes,
    *,
    conf: float | None,
    iou: float | None,
    max_det: int | None,
    classes: str,
    imgsz: int | None,
    annotate: bool,
    model: str,
    version: str,
) -> detector_pb2.DetectRequest:
    """Unset parameters stay unset: detector_svc applies its defaults (conf 0.25, iou 0.45, max_det 300)."""
    class_ids, class_names = parse_classes(classes)
    request = detector_pb2.DetectRequest(
        image=image,
        model=common_pb2.ModelRef(name=model, version=version),
        class_ids=class_ids,
        class_names=class_names,
        annotate=annotate,
    )
    if conf is not None:
        request.conf = conf
    if iou is not None:
        request.iou = iou
    if max_det is not None:
        request.max_det = int32("max_det", max_det)
    if imgsz is not None:
        request.imgsz = int32("imgsz", imgsz)
    return request


@router.post(
    "/detect",
    summary="Detect objects with a YOLO model",
    response_model=DetectResponse,
    responses=error_responses(
        {
            400: "Bad input: not an accepted image, or a bad option",
            404: "Unknown model, or no detection model imported yet",
            413: "Upload too large",
            429: "Overloaded: retry after Retry-After seconds",
            503: "detector_svc unavailable or not deployed",
            504: "detector_svc did not answer in time",
        }
    ),
)
async def detect(
    backends: BackendsDep,
    file: Annotated[UploadFile, image_file()],
    conf: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="Confidence threshold in [0, 1]; default 0.25")
    ] = None,
    iou: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="NMS IoU threshold in [0, 1]; default 0.45")
    ] = None,
    max_det: Annotated[
        int | None, Form(ge=1, le=INT32.stop - 1, description="Most boxes returned; default 300")
    ] = None,
    classes: Annotated[str, Form(description="Keep only these: ids and/or names, e.g. '0,bus'")] = "",
    imgsz: Annotated[
        int | None,
        Form(
            ge=32,
            le=INT32.stop - 1,
            multiple_of=32,
            description="Inference size, a multiple of 32; default 640",
        ),
    ] = None,
    annotate: Annotated[bool, Form(description="Return the annotated image")] = True,
    model: Annotated[str, Form(description="Model name; empty: the default detection model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> DetectResponse:
    """Boxes are in original-image pixels, highest confidence first; ``annotated_image`` is the photo with
    the boxes drawn (a PNG data URI), or null when ``annotate`` is false."""
    request = build_request(
        await file.read(),
        conf=conf,
        iou=iou,
        max_det=max_det,
        classes=classes,
        imgsz=imgsz,
        annotate=annotate,
        model=model,
        version=version,
    )
    reply = await backends.call("detector", backends.detector.Detect, request)
    return DetectResponse.from_proto(reply)
