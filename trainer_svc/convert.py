"""Every conversion between trainer_svc's domain objects and the vision.v1 trainer protos, in one place.

Requests in: a JobSpec becomes a validated `TrainConfig` (unset fields: the defaults of `TrainConfig`, the
option names and enum values: `vision.choices`). Results out: job rows, events and evaluations become
Job, JobEvent, JobResult and GetModelReportResponse messages. The job database stores the JobSpec a client
sent in its proto3 JSON form (`spec_to_json` / `spec_from_json`), so it can show it back unchanged.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from trainer_svc.config import TrainerSettings
from trainer_svc.jobs.database import EventKind, JobEvent, JobResult, JobRow, JobState
from trainer_svc.jobs.slots import Placement
from trainer_svc.training.config import TrainConfig, normalize_label, resolve_dataset_path
from trainer_svc.training.evaluation import Evaluation
from trainer_svc.training.events import TrainEvent
from trainer_svc.training.publishing import Report
from vision.choices import ARCHITECTURES, OPTIMIZERS
from vision.errors import InvalidArgument
from vision.models.store import ModelVersion
from vision.v1 import common_pb2, trainer_pb2

JOB_STATES: dict[JobState, trainer_pb2.JobState] = {
    JobState.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
    JobState.PUBLISHING: trainer_pb2.JOB_STATE_RUNNING,  # still running for clients; it cannot be cancelled
    JobState.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: trainer_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
}
EVENT_KINDS: dict[str, trainer_pb2.JobEvent.Kind] = {
    EventKind.STATE: trainer_pb2.JobEvent.KIND_STATE,
    EventKind.PROGRESS: trainer_pb2.JobEvent.KIND_PROGRESS,
    EventKind.EPOCH: trainer_pb2.JobEvent.KIND_EPOCH,
    EventKind.MESSAGE: trainer_pb2.JobEvent.KIND_MESSAGE,
}
# TrainMode -> freeze_backbone; unspecified (absent here) freezes the backbone only over pretrained weights.
FROZEN_BY_MODE = {trainer_pb2.TRAIN_MODE_FROZEN: True, trainer_pb2.TRAIN_MODE_FULL: False}
_EVENT_FIELDS = tuple(f.name for f in fields(TrainEvent) if f.name != "kind")


# -- requests in ---------------------------------------------------------------------------------------------
def job_spec_to_config(
    spec: trainer_pb2.JobSpec, settings: TrainerSettings, placement: Placement | None = None
) -> TrainConfig:
    """The validated TrainConfig for ``spec``; `InvalidArgument` names the first bad field.

    Unset numbers take `TrainConfig`'s defaults ("0: the default" in the contract; patience: the service's
    ``default_patience``; nproc_per_node and nnodes: what ``placement``, the trainer's devices, give).
    """
    dataset = spec.WhichOneof("dataset")
    if dataset is None:
        raise InvalidArgument("the JobSpec names no dataset: set upload, image_folder or food101")
    if spec.mode != trainer_pb2.TRAIN_MODE_UNSPECIFIED and spec.mode not in FROZEN_BY_MODE:
        raise InvalidArgument(f"unknown mode {spec.mode}; accepted: frozen, full")
    placement = placement or Placement.of(settings)
    nproc_per_node, nnodes = placement.resolve(spec.nproc_per_node, spec.nnodes)
    config = TrainConfig.create(
        spec.model_name,
        architecture=ARCHITECTURES.from_enum(spec.architecture),
        pretrained=spec.pretrained,
        freeze_backbone=FROZEN_BY_MODE.get(spec.mode),
        epochs=spec.epochs or None,
        batch_size=spec.batch_size or None,
        lr=spec.learning_rate or None,
        optimizer=OPTIMIZERS.from_enum(spec.optimizer),
        val_fraction=spec.val_fraction or None,
        seed=spec.seed,
        patience=spec.patience or settings.default_patience,
        label_smoothing=spec.label_smoothing,
        img_size=spec.img_size or None,
        horizontal_flip=spec.horizontal_flip if spec.HasField("horizontal_flip") else None,
        dataset=dataset,
        class_names=[normalize_label(name) for name in spec.class_names] if dataset == "upload" else None,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
    )
    if dataset == "image_folder":
        config.dataset_path = str(resolve_dataset_path(spec.image_folder.path, settings.image_folder_root))
    if dataset == "food101":
        config.max_images_per_class = spec.food101.max_images_per_class
    return config.validate(max_epochs=settings.max_epochs, max_classes=settings.max_classes)


def spec_to_json(spec: trainer_pb2.JobSpec) -> dict[str, Any]:
    """The JobSpec as sent, as plain JSON data (proto field names) for the job database."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def spec_from_json(data: dict[str, Any]) -> trainer_pb2.JobSpec:
    return json_format.ParseDict(data, trainer_pb2.JobSpec())


# -- results out ---------------------------------------------------------------------------------------------
def timestamp(seconds: float | None) -> Timestamp:
    """A Timestamp of ``seconds`` since the epoch; unset (zero) for None."""
    stamp = Timestamp()
    if seconds:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def event_proto(job_id: str, event: JobEvent, seq: int = 0) -> trainer_pb2.JobEvent:
    """``seq``: the event's number in the job's history (0 for the job's current progress)."""
    return trainer_pb2.JobEvent(
        job_id=job_id,
        seq=seq,
        kind=EVENT_KINDS[event.kind],
        state=JOB_STATES[event.state],
        time=timestamp(event.time),
        **{name: getattr(event, name) for name in _EVENT_FIELDS},
    )


def evaluation_proto(evaluation: Evaluation, name: str, version: str) -> trainer_pb2.JobResult:
    """Metrics only; the PNGs are added by `report_proto`."""
    return trainer_pb2.JobResult(
        model=common_pb2.ModelRef(name=name, version=version),
        accuracy=evaluation.accuracy,
        per_class=[
            trainer_pb2.ClassMetrics(
                class_name=c.class_name, precision=c.precision, recall=c.recall, f1=c.f1, support=c.support
            )
            for c in evaluation.per_class
        ],
        confusion_matrix=[value for row in evaluation.confusion for value in row],
        best_epoch=evaluation.best_epoch,
    )


def result_proto(result: JobResult) -> trainer_pb2.JobResult:
    return evaluation_proto(result.evaluation, result.model_name, result.model_version)


def job_proto(row: JobRow) -> trainer_pb2.Job:
    job = trainer_pb2.Job(
        id=row.id,
        state=JOB_STATES[row.state],
        spec=spec_from_json(row.spec),
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        finished_at=timestamp(row.finished_at),
        epoch=row.epoch,
        total_epochs=row.total_epochs,
        error=row.error,
        class_counts=row.class_counts,
        owner=row.owner,
    )
    if row.result is not None:
        job.result.CopyFrom(result_proto(row.result))
    if row.progress is not None:
        job.progress.CopyFrom(event_proto(row.id, row.progress))
    return job


def report_proto(report: Report, version: ModelVersion) -> trainer_pb2.GetModelReportResponse:
    result = evaluation_proto(report.evaluation, version.name, version.version)
    result.confusion_matrix_png = report.confusion_png
    result.training_curves_png = report.curves_png
    return trainer_pb2.GetModelReportResponse(report=result, job_id=report.job_id)
