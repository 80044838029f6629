"""Training over HTTP: POST /train (streamed multipart upload), the jobs, their live events (SSE), and the
evaluation stored with a trained model version."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Header, Query, Request, Response

from gateway.auth.context import caller_metadata
from gateway.backends import BackendsDep
from gateway.errors import ApiError, from_rpc_error
from gateway.responses import ModelRef, error_responses
from gateway.train.events import ENDED, EVENT_ID_PATTERN, FIRST_EVENT_WAIT_S, EventRelay, HeldStream
from gateway.train.form import (
    BOUNDED,
    BOUNDED_DOC,
    DEFAULT_MODEL_NAME,
    FILES_FIELD_PATTERN,
    FOOD101,
    HTTP_DATASETS,
    LABEL_FIELD_PATTERN,
    MAX_IMAGES_PER_CLASS,
    NUMBERS,
    UPLOAD,
    TrainForm,
    field_limits,
)
from gateway.train.responses import (
    STATUS,
    Job,
    JobCreated,
    JobEvent,
    JobLinks,
    JobResponse,
    JobsResponse,
    Metrics,
    ModelLinks,
    ModelReport,
    ProgressEvent,
)
from gateway.train.upload import create_job
from gateway.values import INT32
from vision.choices import ARCHITECTURES, OPTIMIZERS, PRETRAINED_ARCHITECTURES
from vision.models.store import MODEL_NAME_PATTERN
from vision.settings import MAX_JOBS_PAGE_SIZE, MAX_LABEL_CHARS
from vision.v1 import common_pb2, trainer_pb2

router = APIRouter(tags=["train"])
TRAIN_PATH = "/train"
PAGE_TOKEN_PATTERN = r"^[0-9]{0,18}$"
ERRORS = error_responses(
    {
        400: "Bad input: labels, files, options",
        404: "Unknown job or model",
        409: "Pretrained weights unavailable, or the job already ended",
        413: "Upload over the file-count or byte limit",
        429: "The trainer is busy: retry after Retry-After seconds",
        503: "trainer_svc unavailable or not deployed",
    }
)


# Each event's ``data:`` line is one JSON object; the models are added to the components in `gateway.main`.
EVENT_MODELS = (JobEvent, ProgressEvent)
EVENT_STREAM_SCHEMA = {
    "type": "object",
    "description": "One Server-Sent Event (the stream is text/event-stream): `event: state | message` with a "
    "JobEvent as `data:`, `event: progress | epoch` with a ProgressEvent, `event: error` with {message} when "
    "the trainer went away (the client reconnects); `id` resumes with Last-Event-ID",
    "properties": {
        "event": {"type": "string", "enum": ["state", "message", "progress", "epoch", "error"]},
        "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    *({"$ref": f"#/components/schemas/{m.__name__}"} for m in EVENT_MODELS),
                    {
                        "type": "object",
                        "properties": {"message": {"type": "string"}},
                        "required": ["message"],
                    },
                ]
            },
        },
    },
    "required": ["event", "data"],
}


def _form_doc() -> dict[str, Any]:
    """The multipart form of POST /train, for OpenAPI (the body is parsed as it streams, not by FastAPI):
    ``label1``..``labelN`` and ``files1``..``filesN`` as pattern properties, with the limits the gateway and
    the trainer enforce."""
    label = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_LABEL_CHARS,
        "pattern": r"^\S(.*\S)?$",
        "description": "Name of a class (label1 ... labelN, numbered without gaps)",
    }
    files = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "format": "binary", "minLength": 1},
        "description": "Images of the class with the same number (files1 ... filesN); after every field",
    }
    properties: dict[str, Any] = {
        "label1": label,
        "label2": label,
        "files1": files,
        "files2": files,
        "model_name": {"type": "string", "pattern": MODEL_NAME_PATTERN, "default": DEFAULT_MODEL_NAME},
        "arch": {"type": "string", "enum": list(ARCHITECTURES.names), "default": ARCHITECTURES.default},
        "pretrained": {
            "type": "boolean",
            "description": f"default: true for {', '.join(PRETRAINED_ARCHITECTURES)}, else false",
        },
        "freeze_backbone": {"type": "boolean", "description": "default: pretrained"},
        "optimizer": {"type": "string", "enum": list(OPTIMIZERS.names), "default": OPTIMIZERS.default},
        "hflip": {"type": "boolean", "default": True},
        "dataset": {
            "type": "string",
            "enum": list(HTTP_DATASETS),
            "default": UPLOAD,
            "description": "upload: the labelled files of this form; food101: Food-101, fetched by the "
            "trainer with kagglehub (no labels or files then)",
        },
        "max_images_per_class": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_IMAGES_PER_CLASS,
            "description": "dataset=food101 only: at most this many images of each class in each split "
            "(quick runs); 0 or unset: all",
        },
    }
    for name, _, kind, zero_is_default in NUMBERS:
        number: dict[str, Any] = {"type": "integer" if kind is int else "number"}
        if kind is int:
            number.update(minimum=1 if zero_is_default else 0, maximum=INT32.stop - 1)
        elif zero_is_default:
            number["exclusiveMinimum"] = 0
        else:
            number["minimum"] = 0
        properties[name] = {**number, "description": "unset: the trainer's default"}
    for name, _, low, high in BOUNDED:
        properties[name] = {
            "type": "integer",
            "minimum": low,
            "maximum": high,
            "description": BOUNDED_DOC[name],
        }
    schema = {
        "type": "object",
        "properties": properties,
        "patternProperties": {LABEL_FIELD_PATTERN: label, FILES_FIELD_PATTERN: files},
        "additionalProperties": False,
        # Food-101 brings its own classes; an upload needs at least two labelled classes with files.
        "if": {"properties": {"dataset": {"const": FOOD101}}, "required": ["dataset"]},
        "then": {"not": {"anyOf": [{"required": [f]} for f in ("label1", "files1")]}},
        "else": {"required": ["label1", "label2", "files1", "files2"]},
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def _unary(call: Any, retry_after_s: int) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, "trainer", retry_after_s) from exc


@router.post(
    TRAIN_PATH,
    status_code=202,
    summary="Start a training job from labelled images (N classes), or on Food-101",
    response_model=JobCreated,
    responses=ERRORS,
    openapi_extra=_form_doc(),
)
async def train(request: Request, backends: BackendsDep) -> JobCreated:
    """Multipart fields first (``label1``..``labelN`` and options), then ``files1``..``filesN``: the body is
    streamed to the trainer as it arrives. Answers once every image is stored and the job is queued.
    With ``dataset=food101`` the form has options only and the trainer fetches Food-101 itself."""
    settings = backends.settings
    channel = backends.trainer_upload  # 503 when no trainer is deployed
    form = TrainForm(
        max_files=settings.train_max_files,
        max_bytes=settings.train_max_bytes,
        max_labels=settings.train_max_labels,
    )
    limits = field_limits(
        settings.train_max_labels, settings.train_max_field_bytes, settings.train_max_form_bytes
    )
    with backends.uploads.held():  # 429 beyond VISION_GATEWAY_TRAIN_MAX_CONCURRENT
        job = await create_job(
            channel,
            request.headers.get("content-type", ""),
            request.stream(),
            form,
            limits=limits,
            timeout_s=settings.train_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
    return JobCreated(job_id=job.id, status=STATUS.get(job.state, "queued"), **JobLinks.urls(job.id))


@router.get("/jobs", summary="Training jobs, newest first", response_model=JobsResponse, responses=ERRORS)
async def list_jobs(
    backends: BackendsDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE_SIZE, description="Jobs per page")] = 50,
    page_token: Annotated[
        str,
        Query(pattern=PAGE_TOKEN_PATTERN, max_length=18, description="next_page_token of the previous page"),
    ] = "",
) -> JobsResponse:
    request = trainer_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
    reply = await backends.call("trainer", backends.trainer.ListJobs, request)
    return JobsResponse(jobs=[Job.from_proto(j) for j in reply.jobs], next_page_token=reply.next_page_token)


@router.get(
    "/jobs/{job_id}",
    summary="A job: status, progress, metrics, published model, error",
    response_model=JobResponse,
    responses=ERRORS,
)
async def get_job(job_id: str, backends: BackendsDep) -> JobResponse:
    job = await backends.call("trainer", backends.trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id))
    return JobResponse.model_validate(Job.fields(job))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a queued or running job",
    response_model=JobResponse,
    responses=ERRORS,
)
async def cancel_job(job_id: str, backends: BackendsDep) -> JobResponse:
    job = await backends.call(
        "trainer", backends.trainer.CancelJob, trainer_pb2.CancelJobRequest(job_id=job_id)
    )
    return JobResponse.model_validate(Job.fields(job))


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress as Server-Sent Events (history first), until the job ends",
    response_class=Response,
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {"schema": EVENT_STREAM_SCHEMA}}},
        204: {"description": "The job has ended and the client has every event (after Last-Event-ID)"},
    },
)
async def job_events(
    job_id: str,
    backends: BackendsDep,
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=EVENT_ID_PATTERN,
            description="The id of the last event received: the stream resumes after it (EventSource sends "
            "it when it reconnects)",
        ),
    ] = "",
) -> Response:
    """``event: state | progress | epoch | message`` with one JSON object per ``data:`` line; each event's
    ``id`` is its place in the job's history. A stream ends when the job has ended or after
    ``VISION_GATEWAY_EVENTS_MAX_S``; a browser's EventSource then reconnects with ``Last-Event-ID`` and gets
    only what it missed. 204 when the job has ended and nothing is left to send (EventSource stops)."""
    settings = backends.settings
    job = await backends.call("trainer", backends.trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id))
    after = int(last_event_id or 0)
    backends.event_streams.take()  # 429 beyond VISION_GATEWAY_EVENTS_MAX_STREAMS
    call = backends.trainer.WatchJob(
        trainer_pb2.WatchJobRequest(job_id=job_id, after_seq=after), metadata=caller_metadata()
    )
    events = EventRelay(call, settings.events_max_s, settings.retry_after_s)

    def release() -> None:
        events.close()
        backends.event_streams.give_back()

    try:
        if await events.at_end(None if job.state in ENDED else FIRST_EVENT_WAIT_S):
            release()
            return Response(status_code=204)
    except BaseException:
        release()
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return HeldStream(events.stream(), on_close=release, media_type="text/event-stream", headers=headers)


async def _report(backends: BackendsDep, name: str, version: str) -> trainer_pb2.GetModelReportResponse:
    ref = common_pb2.ModelRef(name=name, version="" if version == "latest" else version)
    request = trainer_pb2.GetModelReportRequest(model=ref)
    reply: trainer_pb2.GetModelReportResponse = await backends.call(
        "trainer", backends.trainer.GetModelReport, request
    )
    return reply


@router.get(
    "/models/{name}/versions/{version}/report",
    summary="A trained version's metrics",
    response_model=ModelReport,
    responses=ERRORS,
)
async def model_report(name: str, version: str, backends: BackendsDep) -> ModelReport:
    """``version`` is a number or ``latest``."""
    reply = await _report(backends, name, version)
    model = reply.report.model
    return ModelReport(
        model=ModelRef.from_proto(model),
        job_id=reply.job_id,
        metrics=Metrics.from_proto(reply.report),
        **ModelLinks.urls(model.name, model.version),
    )


@router.get(
    "/models/{name}/versions/{version}/{image}.png",
    summary="A trained version's confusion matrix or training curves (PNG)",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def model_image(name: str, version: str, image: str, backends: BackendsDep) -> Response:
    """``image`` is ``confusion_matrix`` or ``training_curves``."""
    if image not in ("confusion_matrix", "training_curves"):
        raise ApiError(404, "not_found", f"no image {image!r}: confusion_matrix.png or training_curves.png")
    report = (await _report(backends, name, version)).report
    png = report.confusion_matrix_png if image == "confusion_matrix" else report.training_curves_png
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})
