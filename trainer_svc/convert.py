"""Domain results -> protobuf: training events, a published version's evaluation."""

from __future__ import annotations

from typing import Any

from trainer_svc.evaluation import Evaluation
from trainer_svc.publishing import Report, read_report
from vision.models.store import ModelVersion
from vision.v1 import common_pb2, trainer_pb2

EVENT_KINDS = {
    "progress": trainer_pb2.JobEvent.KIND_PROGRESS,
    "epoch": trainer_pb2.JobEvent.KIND_EPOCH,
    "info": trainer_pb2.JobEvent.KIND_MESSAGE,
}
_FIELDS = (
    "epoch",
    "total_epochs",
    "step",
    "steps_per_epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "images_per_second",
    "eta_seconds",
    "message",
)


def train_event_proto(job_id: str, message: dict[str, Any]) -> trainer_pb2.JobEvent:
    """A worker's {"type": "event", "kind": ..., ...TrainEvent fields} as a JobEvent of a RUNNING job."""
    return trainer_pb2.JobEvent(
        job_id=job_id,
        kind=EVENT_KINDS[message["kind"]],
        state=trainer_pb2.JOB_STATE_RUNNING,
        **{name: message[name] for name in _FIELDS if name in message},
    )


def evaluation_proto(evaluation: Evaluation, version: ModelVersion) -> trainer_pb2.JobResult:
    """Metrics only; the PNGs are added by GetModelReport."""
    return trainer_pb2.JobResult(
        model=common_pb2.ModelRef(name=version.name, version=version.version),
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


def job_result(version: ModelVersion) -> trainer_pb2.JobResult:
    return evaluation_proto(read_report(version).evaluation, version)


def report_proto(report: Report, version: ModelVersion) -> trainer_pb2.GetModelReportResponse:
    result = evaluation_proto(report.evaluation, version)
    result.confusion_matrix_png = report.confusion_png
    result.training_curves_png = report.curves_png
    return trainer_pb2.GetModelReportResponse(report=result, job_id=report.job_id)
