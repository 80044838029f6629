"""Reading uploads and turning protobuf replies into the JSON shapes the HTTP API promises."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from fastapi import UploadFile

from gateway.errors import ApiError
from vision.v1 import common_pb2


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


def prediction_json(best: common_pb2.ScoredClass) -> dict[str, Any]:
    return {
        "class": best.label,
        "class_id": best.class_id,
        "confidence": best.score,
        "confidence_percent": round(best.score * 100, 2),
    }


def top_json(classes: Sequence[common_pb2.ScoredClass]) -> list[dict[str, Any]]:
    return [
        {"rank": rank, "class": c.label, "class_id": c.class_id, "confidence": c.score}
        for rank, c in enumerate(classes, start=1)
    ]


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
