"""Training jobs, their events and results as the pydantic bodies the HTTP API promises."""

from __future__ import annotations

import json
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field

from gateway.responses import Body, ModelRef
from vision.choices import ARCHITECTURES
from vision.v1 import trainer_pb2

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "unknown"]
EventKind = Literal["state", "progress", "epoch", "message", "unknown"]
STATUS: dict[int, JobStatus] = {
    trainer_pb2.JOB_STATE_QUEUED: "queued",
    trainer_pb2.JOB_STATE_RUNNING: "running",
    trainer_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    trainer_pb2.JOB_STATE_FAILED: "failed",
    trainer_pb2.JOB_STATE_CANCELLED: "cancelled",
}
EVENT_KINDS: dict[int, EventKind] = {
    trainer_pb2.JobEvent.KIND_STATE: "state",
    trainer_pb2.JobEvent.KIND_PROGRESS: "progress",
    trainer_pb2.JobEvent.KIND_EPOCH: "epoch",
    trainer_pb2.JobEvent.KIND_MESSAGE: "message",
}


def iso(stamp: Timestamp) -> str | None:
    return stamp.ToDatetime().isoformat() + "Z" if stamp.seconds or stamp.nanos else None


def _model_base(name: str, version: str) -> str:
    return f"/models/{name}/versions/{version}"


def _unless_none(value: object) -> bool:
    return value is None


class JobLinks(Body):
    status_url: str
    events_url: str

    @staticmethod
    def urls(job_id: str) -> dict[str, str]:
        return {"status_url": f"/jobs/{job_id}", "events_url": f"/jobs/{job_id}/events"}


class ModelLinks(Body):
    report_url: str
    confusion_matrix_url: str
    training_curves_url: str

    @staticmethod
    def urls(name: str, version: str) -> dict[str, str]:
        base = _model_base(name, version)
        return {
            "report_url": f"{base}/report",
            "confusion_matrix_url": f"{base}/confusion_matrix.png",
            "training_curves_url": f"{base}/training_curves.png",
        }


class Progress(Body):
    """Where training is: epoch (from 1) and step within it, fraction of the whole run done in [0, 1],
    losses, accuracies in [0, 1], learning rate, images per second and the ETA in seconds."""

    epoch: int
    total_epochs: int
    step: int
    steps_per_epoch: int
    fraction: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None = Field(description="Set on epoch events (the end of an epoch).")
    val_accuracy: float | None = Field(description="Set on epoch events (the end of an epoch).")
    learning_rate: float
    images_per_second: float
    eta_seconds: float

    @staticmethod
    def fields(event: trainer_pb2.JobEvent) -> dict[str, int | float | None]:
        total = max(event.total_epochs, 1)
        steps = max(event.steps_per_epoch, 1)
        done = (event.epoch - 1 + event.step / steps) / total if event.epoch else 0.0
        end_of_epoch = event.kind == trainer_pb2.JobEvent.KIND_EPOCH
        return {
            "epoch": event.epoch,
            "total_epochs": event.total_epochs,
            "step": event.step,
            "steps_per_epoch": event.steps_per_epoch,
            "fraction": round(min(max(done, 0.0), 1.0), 4),
            "train_loss": event.train_loss,
            "train_accuracy": event.train_accuracy,
            "val_loss": event.val_loss if end_of_epoch else None,
            "val_accuracy": event.val_accuracy if end_of_epoch else None,
            "learning_rate": event.learning_rate,
            "images_per_second": round(event.images_per_second, 2),
            "eta_seconds": round(event.eta_seconds, 1),
        }

    @classmethod
    def from_proto(cls, event: trainer_pb2.JobEvent) -> Progress:
        return cls.model_validate(cls.fields(event))


class ClassMetrics(Body):
    class_: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(Body):
    """Validation accuracy, per-class precision / recall / F1 / support, and the confusion matrix as a list
    of rows (row = true class, column = predicted class, in ``classes`` order)."""

    accuracy: float
    best_epoch: int
    classes: list[str]
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]

    @classmethod
    def from_proto(cls, result: trainer_pb2.JobResult) -> Metrics:
        classes = [c.class_name for c in result.per_class]
        n = len(classes)
        flat = list(result.confusion_matrix)
        per_class = [
            ClassMetrics(
                class_=c.class_name, precision=c.precision, recall=c.recall, f1=c.f1, support=c.support
            )
            for c in result.per_class
        ]
        return cls(
            accuracy=result.accuracy,
            best_epoch=result.best_epoch,
            classes=classes,
            per_class=per_class,
            confusion_matrix=[flat[i * n : (i + 1) * n] for i in range(n)],
        )


class Job(JobLinks):
    """A training job. The three ``*_url`` links of the published model appear once it has one."""

    job_id: str
    status: JobStatus
    owner: str = Field("", description="Who created the job: key:<name>, a JWT subject, or anonymous")
    model_name: str
    arch: str = Field(json_schema_extra={"enum": list(ARCHITECTURES.names)})
    dataset: str | None = Field(description="upload | image_folder | food101")
    classes: list[str]
    class_counts: dict[str, int]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    epoch: int
    total_epochs: int
    progress: Progress | None
    metrics: Metrics | None
    model: ModelRef | None
    error: str | None
    report_url: str | None = Field(None, exclude_if=_unless_none)
    confusion_matrix_url: str | None = Field(None, exclude_if=_unless_none)
    training_curves_url: str | None = Field(None, exclude_if=_unless_none)

    @staticmethod
    def fields(job: trainer_pb2.Job) -> dict[str, object]:
        spec = job.spec
        published = job.result.model.name
        version = job.result.model.version
        return {
            "job_id": job.id,
            "status": STATUS.get(job.state, "unknown"),
            "owner": job.owner,
            "model_name": spec.model_name,
            "arch": ARCHITECTURES.from_enum(spec.architecture),
            "dataset": spec.WhichOneof("dataset"),
            "classes": list(spec.class_names) or sorted(job.class_counts),
            "class_counts": dict(job.class_counts),
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "epoch": job.epoch,
            "total_epochs": job.total_epochs,
            "progress": Progress.from_proto(job.progress) if job.HasField("progress") else None,
            "metrics": Metrics.from_proto(job.result) if published else None,
            "model": ModelRef(name=published, version=version) if published else None,
            "error": job.error or None,
            **JobLinks.urls(job.id),
            **(ModelLinks.urls(published, version) if published else {}),
        }

    @classmethod
    def from_proto(cls, job: trainer_pb2.Job) -> Job:
        return cls.model_validate(cls.fields(job))


class JobResponse(Job):
    success: Literal[True] = True


class JobsResponse(Body):
    success: Literal[True] = True
    jobs: list[Job] = Field(description="Newest first.")
    next_page_token: str = Field(description="Pass as page_token for the next page; empty: the last one.")


class JobCreated(JobLinks):
    success: Literal[True] = True
    job_id: str
    status: JobStatus


class ModelReport(ModelLinks):
    success: Literal[True] = True
    model: ModelRef
    job_id: str
    metrics: Metrics


# -- Server-Sent Events --------------------------------------------------------------------------------------


class JobEvent(Body):
    """The ``data:`` of a state or message event."""

    job_id: str
    kind: EventKind
    status: JobStatus
    time: str | None
    message: str | None


class ProgressEvent(JobEvent, Progress):
    """The ``data:`` of a progress or epoch event: the event and where training is."""


def event_body(event: trainer_pb2.JobEvent) -> JobEvent:
    fields: dict[str, object] = {
        "job_id": event.job_id,
        "kind": EVENT_KINDS.get(event.kind, "unknown"),
        "status": STATUS.get(event.state, "unknown"),
        "time": iso(event.time),
        "message": event.message or None,
    }
    if event.kind in (trainer_pb2.JobEvent.KIND_PROGRESS, trainer_pb2.JobEvent.KIND_EPOCH):
        return ProgressEvent.model_validate({**fields, **Progress.fields(event)})
    return JobEvent.model_validate(fields)


def sse(event: trainer_pb2.JobEvent) -> bytes:
    """One Server-Sent Event: ``id`` (the event's place in the job's history, what ``Last-Event-ID`` resumes
    after; none for an event outside it), ``event`` (state | progress | epoch | message) and one JSON line."""
    kind = EVENT_KINDS.get(event.kind, "message")
    data = json.dumps(event_body(event).model_dump(mode="json", by_alias=True))
    event_id = f"id: {event.seq}\n" if event.seq > 0 else ""
    return f"{event_id}event: {kind}\ndata: {data}\n\n".encode()
