"""Training over HTTP: POST /train (streamed multipart upload), the jobs, their live events (SSE), and the
evaluation stored with a trained model version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.backends import BackendsDep
from gateway.errors import ApiError, from_rpc_error
from gateway.train_shapes import STATUS, job_json, job_urls, metrics_json, model_urls, sse
from gateway.train_upload import TrainForm, create_job
from vision.v1 import common_pb2, trainer_pb2

router = APIRouter(tags=["train"])
TRAIN_PATH = "/train"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input: labels, files, options"},
    404: {"description": "Unknown job or model"},
    409: {"description": "Pretrained weights unavailable, or the job already ended"},
    413: {"description": "Upload over the file-count or byte limit"},
    503: {"description": "trainer_svc unavailable or not deployed"},
}
_FORM_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "label1": {
                            "type": "string",
                            "description": "Name of class 1 (label2 ... labelN likewise)",
                        },
                        "files1": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Images of class 1 (files2 ... filesN likewise); after the fields",
                        },
                        "model_name": {"type": "string", "default": "custom"},
                        "arch": {"type": "string", "enum": ["resnet18", "resnet50", "smallcnn"]},
                        "pretrained": {"type": "boolean", "description": "default: true except smallcnn"},
                        "freeze_backbone": {"type": "boolean", "description": "default: pretrained"},
                        "epochs": {"type": "integer", "default": 5},
                        "batch_size": {"type": "integer", "default": 32},
                        "lr": {"type": "number", "default": 0.001},
                        "img_size": {"type": "integer", "default": 224},
                        "val_split": {"type": "number", "default": 0.2},
                        "seed": {"type": "integer", "default": 0},
                        "patience": {"type": "integer", "default": 5},
                        "optimizer": {"type": "string", "enum": ["adam", "sgd"]},
                        "label_smoothing": {"type": "number", "default": 0},
                        "hflip": {"type": "boolean", "default": True},
                    },
                    "required": ["label1", "label2", "files1", "files2"],
                }
            }
        },
    }
}


async def _unary(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, "trainer", 1) from exc


@router.post(
    TRAIN_PATH,
    status_code=202,
    summary="Start a training job from labelled images (N classes)",
    responses=ERRORS,
    openapi_extra=_FORM_DOC,
)
async def train(request: Request, backends: BackendsDep) -> JSONResponse:
    """Multipart fields first (``label1``..``labelN`` and options), then ``files1``..``filesN``: the body is
    streamed to the trainer as it arrives. Answers once every image is stored and the job is queued."""
    settings = backends.settings
    backends.channel("trainer")  # 503 when no trainer is deployed
    form = TrainForm(max_files=settings.train_max_files, max_bytes=settings.train_max_bytes)
    job = await create_job(
        settings.trainer_addr,
        request.headers.get("content-type", ""),
        request.stream(),
        form,
        timeout_s=settings.train_timeout_s,
        retry_after_s=settings.retry_after_s,
    )
    body = {"success": True, "job_id": job.id, "status": STATUS.get(job.state, "queued"), **job_urls(job.id)}
    return JSONResponse(body, status_code=202)


@router.get("/jobs", summary="Training jobs, newest first", responses=ERRORS)
async def list_jobs(backends: BackendsDep, page_size: int = 50, page_token: str = "") -> dict[str, Any]:
    request = trainer_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
    reply = await backends.call("trainer", backends.trainer.ListJobs, request)
    return {
        "success": True,
        "jobs": [job_json(j) for j in reply.jobs],
        "next_page_token": reply.next_page_token,
    }


@router.get(
    "/jobs/{job_id}", summary="A job: status, progress, metrics, published model, error", responses=ERRORS
)
async def get_job(job_id: str, backends: BackendsDep) -> dict[str, Any]:
    job = await backends.call("trainer", backends.trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id))
    return {"success": True, **job_json(job)}


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job", responses=ERRORS)
async def cancel_job(job_id: str, backends: BackendsDep) -> dict[str, Any]:
    job = await backends.call(
        "trainer", backends.trainer.CancelJob, trainer_pb2.CancelJobRequest(job_id=job_id)
    )
    return {"success": True, **job_json(job)}


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress as Server-Sent Events (history first), until the job ends",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def job_events(job_id: str, backends: BackendsDep) -> StreamingResponse:
    """``event: state | progress | epoch | message`` with one JSON object per ``data:`` line."""
    call = backends.trainer.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id))
    first = await _unary(call.read())  # an unknown job fails here, as a JSON 404, not inside the stream

    async def stream() -> AsyncIterator[bytes]:
        event, number = first, 0
        try:
            while event is not grpc.aio.EOF:  # type: ignore[attr-defined]
                number += 1
                yield sse(event, number)
                event = await call.read()
        except grpc.aio.AioRpcError as exc:
            yield f'event: error\ndata: {{"message": "{exc.code().name.lower()}"}}\n\n'.encode()
        finally:
            call.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _report(backends: BackendsDep, name: str, version: str) -> trainer_pb2.GetModelReportResponse:
    ref = common_pb2.ModelRef(name=name, version="" if version == "latest" else version)
    request = trainer_pb2.GetModelReportRequest(model=ref)
    reply: trainer_pb2.GetModelReportResponse = await backends.call(
        "trainer", backends.trainer.GetModelReport, request
    )
    return reply


@router.get(
    "/models/{name}/versions/{version}/report", summary="A trained version's metrics", responses=ERRORS
)
async def model_report(name: str, version: str, backends: BackendsDep) -> dict[str, Any]:
    """``version`` is a number or ``latest``."""
    reply = await _report(backends, name, version)
    model = reply.report.model
    return {
        "success": True,
        "model": {"name": model.name, "version": model.version},
        "job_id": reply.job_id,
        "metrics": metrics_json(reply.report),
        **model_urls(model.name, model.version),
    }


@router.get(
    "/models/{name}/versions/{version}/{image}.png",
    summary="A trained version's confusion matrix or training curves (PNG)",
    responses={**ERRORS, 200: {"content": {"image/png": {}}}},
)
async def model_image(name: str, version: str, image: str, backends: BackendsDep) -> Response:
    """``image`` is ``confusion_matrix`` or ``training_curves``."""
    if image not in ("confusion_matrix", "training_curves"):
        raise ApiError(404, "not_found", f"no image {image!r}: confusion_matrix.png or training_curves.png")
    report = (await _report(backends, name, version)).report
    png = report.confusion_matrix_png if image == "confusion_matrix" else report.training_curves_png
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})
