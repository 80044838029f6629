"""POST /detect: YOLO object detection on an uploaded image (the original project's response shape)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from gateway.backends import BackendsDep
from gateway.errors import ApiError
from gateway.shapes import model_json, png_data_uri, read_upload, timing_json
from vision.v1 import common_pb2, detector_pb2

router = APIRouter(tags=["detect"])
INT32_MAX = 2**31 - 1


def _int32(field: str, value: int | None) -> int | None:
    if value is not None and not -INT32_MAX <= value <= INT32_MAX:
        raise ApiError(400, "invalid_argument", f"{field} {value} is out of range")
    return value


def parse_classes(classes: str) -> tuple[list[int], list[str]]:
    """'0, 2, person' -> ([0, 2], ['person']): integers are class ids, anything else a class name."""
    ids: list[int] = []
    names: list[str] = []
    for token in (t.strip() for t in classes.split(",")):
        if token.lstrip("-").isdigit():
            ids.append(int(_int32("class id", int(token)) or 0))
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
    if (checked := _int32("max_det", max_det)) is not None:
        request.max_det = checked
    if (checked := _int32("imgsz", imgsz)) is not None:
        request.imgsz = checked
    return request


def detection_json(box: detector_pb2.Box) -> dict[str, Any]:
    return {
        "class": box.class_name,
        "class_id": box.class_id,
        "confidence": box.confidence,
        "bbox": {
            "x1": box.x1,
            "y1": box.y1,
            "x2": box.x2,
            "y2": box.y2,
            "width": box.width,
            "height": box.height,
        },
    }


@router.post(
    "/detect",
    summary="Detect objects with a YOLO model",
    responses={
        400: {"description": "Bad input"},
        404: {"description": "Unknown model, or no detection model imported yet"},
        413: {"description": "Upload too large"},
        429: {"description": "Overloaded"},
        503: {"description": "detector_svc unavailable or not deployed"},
    },
)
async def detect(
    backends: BackendsDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP image")],
    conf: Annotated[float | None, Form(description="Confidence threshold in [0, 1]; default 0.25")] = None,
    iou: Annotated[float | None, Form(description="NMS IoU threshold in [0, 1]; default 0.45")] = None,
    max_det: Annotated[int | None, Form(description="Most boxes returned; default 300")] = None,
    classes: Annotated[str, Form(description="Keep only these: ids and/or names, e.g. '0,bus'")] = "",
    imgsz: Annotated[int | None, Form(description="Inference size, a multiple of 32; default 640")] = None,
    annotate: Annotated[bool, Form(description="Return the annotated image")] = True,
    model: Annotated[str, Form(description="Model name; empty: the default detection model")] = "",
    version: Annotated[str, Form(description="Model version; empty: the newest")] = "",
) -> dict[str, Any]:
    """Boxes are in original-image pixels, highest confidence first; ``annotated_image`` is the photo with
    the boxes drawn (a PNG data URI), or null when ``annotate`` is false."""
    request = build_request(
        await read_upload(file),
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
    return {
        "success": True,
        "num_objects": len(reply.boxes),
        "detections": [detection_json(b) for b in reply.boxes],
        "annotated_image": png_data_uri(reply.annotated_png) if reply.annotated_png else None,
        "image": {"width": reply.image_width, "height": reply.image_height},
        "model": model_json(reply.model),
        "timing_ms": timing_json(reply.timing),
    }
