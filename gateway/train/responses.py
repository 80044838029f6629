"""Training jobs, their events and results as the JSON the HTTP API promises."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from vision.v1 import trainer_pb2

STATUS = {
    trainer_pb2.JOB_STATE_QUEUED: "queued",
    trainer_pb2.JOB_STATE_RUNNING: "running",
    trainer_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    trainer_pb2.JOB_STATE_FAILED: "failed",
    trainer_pb2.JOB_STATE_CANCELLED: "cancelled",
}
EVENT_KINDS = {
    trainer_pb2.JobEvent.KIND_STATE: "state",
    trainer_pb2.JobEvent.KIND_PROGRESS: "progress",
    trainer_pb2.JobEvent.KIND_EPOCH: "epoch",
    trainer_pb2.JobEvent.KIND_MESSAGE: "message",
}
ARCH_NAMES = {
    trainer_pb2.ARCHITECTURE_UNSPECIFIED: "resnet18",
    trainer_pb2.ARCHITECTURE_RESNET18: "resnet18",
    trainer_pb2.ARCHITECTURE_RESNET50: "resnet50",
    trainer_pb2.ARCHITECTURE_SMALLCNN: "smallcnn",
}


def iso(stamp: Timestamp) -> str | None:
    return stamp.ToDatetime().isoformat() + "Z" if stamp.seconds or stamp.nanos else None


def job_urls(job_id: str) -> dict[str, str]:
    return {"status_url": f"/jobs/{job_id}", "events_url": f"/jobs/{job_id}/events"}


def model_urls(name: str, version: str) -> dict[str, str]:
    base = f"/models/{name}/versions/{version}"
    return {
        "report_url": f"{base}/report",
        "confusion_matrix_url": f"{base}/confusion_matrix.png",
        "training_curves_url": f"{base}/training_curves.png",
    }


def progress_json(event: trainer_pb2.JobEvent) -> dict[str, Any]:
    """Where training is: epoch (from 1) and step within it, fraction of the whole run done in [0, 1],
    losses, accuracies in [0, 1], learning rate, images per second and the ETA in seconds."""
    total = max(event.total_epochs, 1)
    steps = max(event.steps_per_epoch, 1)
    done = (event.epoch - 1 + event.step / steps) / total if event.epoch else 0.0
    return {
        "epoch": event.epoch,
        "total_epochs": event.total_epochs,
        "step": event.step,
        "steps_per_epoch": event.steps_per_epoch,
        "fraction": round(min(max(done, 0.0), 1.0), 4),
        "train_loss": event.train_loss,
        "train_accuracy": event.train_accuracy,
        "val_loss": event.val_loss if event.kind == trainer_pb2.JobEvent.KIND_EPOCH else None,
        "val_accuracy": event.val_accuracy if event.kind == trainer_pb2.JobEvent.KIND_EPOCH else None,
        "learning_rate": event.learning_rate,
        "images_per_second": round(event.images_per_second, 2),
        "eta_seconds": round(event.eta_seconds, 1),
    }


def metrics_json(result: trainer_pb2.JobResult) -> dict[str, Any]:
    """Validation accuracy, per-class precision / recall / F1 / support, and the confusion matrix as a list
    of rows (row = true class, column = predicted class, in ``classes`` order)."""
    classes = [c.class_name for c in result.per_class]
    n = len(classes)
    flat = list(result.confusion_matrix)
    return {
        "accuracy": result.accuracy,
        "best_epoch": result.best_epoch,
        "classes": classes,
        "per_class": [
            {
                "class": c.class_name,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
                "support": c.support,
            }
            for c in result.per_class
        ],
        "confusion_matrix": [flat[i * n : (i + 1) * n] for i in range(n)],
    }


def job_json(job: trainer_pb2.Job) -> dict[str, Any]:
    spec = job.spec
    published = job.result.model.name
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": STATUS.get(job.state, "unknown"),
        "model_name": spec.model_name,
        "arch": ARCH_NAMES.get(spec.architecture, "resnet18"),
        "dataset": spec.WhichOneof("dataset"),
        "classes": list(spec.class_names) or sorted(job.class_counts),
        "class_counts": dict(job.class_counts),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "epoch": job.epoch,
        "total_epochs": job.total_epochs,
        "progress": progress_json(job.progress) if job.HasField("progress") else None,
        "metrics": metrics_json(job.result) if published else None,
        "model": {"name": published, "version": job.result.model.version} if published else None,
        "error": job.error or None,
        **job_urls(job.id),
    }
    if published:
        body.update(model_urls(published, job.result.model.version))
    return body


def event_json(event: trainer_pb2.JobEvent) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": event.job_id,
        "kind": EVENT_KINDS.get(event.kind, "unknown"),
        "status": STATUS.get(event.state, "unknown"),
        "time": iso(event.time),
        "message": event.message or None,
    }
    if event.kind in (trainer_pb2.JobEvent.KIND_PROGRESS, trainer_pb2.JobEvent.KIND_EPOCH):
        body.update(progress_json(event))
    return body


def sse(event: trainer_pb2.JobEvent, number: int) -> bytes:
    """One Server-Sent Event: ``id``, ``event`` (state | progress | epoch | message) and one JSON line."""
    kind = EVENT_KINDS.get(event.kind, "message")
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(event_json(event))}\n\n".encode()
