"""Typed results of the client's calls: frozen dataclasses made from the replies (``from_proto``), so a
caller never handles generated protobuf classes. Scores and confidences are in [0, 1]; boxes are in
original-image pixels (origin top-left); times are milliseconds; timestamps are aware UTC datetimes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vision.choices import CAM_METHODS, reply_overlay
from vision.v1 import trainer_pb2


def _time(stamp: Any) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=timezone.utc)


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @classmethod
    def from_proto(cls, ref: Any) -> ModelRef:
        return cls(ref.name, ref.version)


@dataclass(frozen=True)
class ScoredClass:
    id: int
    label: str
    score: float  # softmax probability

    @classmethod
    def from_proto(cls, scored: Any) -> ScoredClass:
        return cls(scored.class_id, scored.label, scored.score)


@dataclass(frozen=True)
class Timing:
    """Where the request spent its time on the server, in milliseconds."""

    decode_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int

    @classmethod
    def from_proto(cls, timing: Any) -> Timing:
        return cls(timing.decode_ms, timing.queue_ms, timing.inference_ms, timing.total_ms, timing.batch_size)


@dataclass(frozen=True)
class Classification:
    classes: tuple[ScoredClass, ...]  # highest score first
    model: ModelRef
    timing: Timing

    @property
    def top(self) -> ScoredClass:
        return self.classes[0]

    @classmethod
    def from_proto(cls, reply: Any) -> Classification:
        return cls(
            tuple(ScoredClass.from_proto(c) for c in reply.classes),
            ModelRef.from_proto(reply.model),
            Timing.from_proto(reply.timing),
        )


@dataclass(frozen=True)
class Explanation:
    prediction: ScoredClass
    top_k: tuple[ScoredClass, ...]
    target: ScoredClass  # the class the heatmap explains
    method: str  # "cam", "gradcam", "gradcampp"
    layer: str
    heatmap_png: bytes = field(repr=False)  # 8-bit grayscale at model-input resolution, value = round(255*h)
    overlay: bytes = field(repr=False)  # heatmap over the image, in the geometry the model saw
    overlay_format: str  # "jpeg" or "png": how ``overlay`` is encoded
    model: ModelRef
    timing: Timing

    @classmethod
    def from_proto(cls, reply: Any) -> Explanation:
        overlay_format, overlay = reply_overlay(reply)
        return cls(
            ScoredClass.from_proto(reply.prediction),
            tuple(ScoredClass.from_proto(c) for c in reply.top_k),
            ScoredClass.from_proto(reply.target),
            CAM_METHODS.from_enum(reply.method),
            reply.layer,
            reply.heatmap_png,
            overlay,
            overlay_format,
            ModelRef.from_proto(reply.model),
            Timing.from_proto(reply.timing),
        )


@dataclass(frozen=True)
class Box:
    """A detection in original-image pixels (origin top-left, x right, y down)."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    class_name: str
    confidence: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @classmethod
    def from_proto(cls, box: Any) -> Box:
        return cls(box.x1, box.y1, box.x2, box.y2, box.class_id, box.class_name, box.confidence)


@dataclass(frozen=True)
class Detection:
    boxes: tuple[Box, ...]  # highest confidence first
    image_width: int
    image_height: int
    annotated_png: bytes = field(repr=False)  # empty unless annotate=True
    model: ModelRef
    timing: Timing

    @classmethod
    def from_proto(cls, reply: Any) -> Detection:
        return cls(
            tuple(Box.from_proto(b) for b in reply.boxes),
            reply.image_width,
            reply.image_height,
            reply.annotated_png,
            ModelRef.from_proto(reply.model),
            Timing.from_proto(reply.timing),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One stored model version, as the answering service sees it (``loaded``, ``load_error``, runtime)."""

    name: str
    version: str
    architecture: str
    task: str
    class_names: tuple[str, ...]
    input_size: int
    created_at: datetime | None
    metrics: dict[str, float]
    source: str
    loaded: bool
    load_error: str
    runtime: str
    precision: str
    runtime_fallback: str

    @classmethod
    def from_proto(cls, info: Any) -> ModelInfo:
        return cls(
            info.name, info.version, info.architecture, info.task, tuple(info.class_names), info.input_size,
            _time(info.created_at), dict(info.metrics), info.source, info.loaded, info.load_error,
            info.runtime, info.precision, info.runtime_fallback,
        )  # fmt: skip


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelInfo, ...]
    default_model: str  # used when a request names no model

    @classmethod
    def from_proto(cls, reply: Any) -> ModelList:
        return cls(tuple(ModelInfo.from_proto(m) for m in reply.models), reply.default_model)


class JobState(str, enum.Enum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        return cls(trainer_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower())  # type: ignore[arg-type]

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventKind(str, enum.Enum):
    UNSPECIFIED = "unspecified"
    STATE = "state"  # the job's state changed
    PROGRESS = "progress"  # periodic, within an epoch
    EPOCH = "epoch"  # end of an epoch, with validation metrics
    MESSAGE = "message"  # a note: dataset summary, resumed from a checkpoint, early stop

    @classmethod
    def from_proto(cls, value: int) -> EventKind:
        return cls(trainer_pb2.JobEvent.Kind.Name(value).removeprefix("KIND_").lower())  # type: ignore[arg-type]


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's history; ``seq`` is its position (watch_job(after_seq=seq) resumes after it)."""

    job_id: str
    seq: int
    kind: EventKind
    state: JobState
    time: datetime | None
    epoch: int
    total_epochs: int
    step: int
    steps_per_epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    images_per_second: float
    eta_seconds: float
    message: str

    @classmethod
    def from_proto(cls, event: Any) -> JobEvent:
        return cls(
            event.job_id, event.seq, EventKind.from_proto(event.kind), JobState.from_proto(event.state),
            _time(event.time), event.epoch, event.total_epochs, event.step, event.steps_per_epoch,
            event.train_loss, event.train_accuracy, event.val_loss, event.val_accuracy, event.learning_rate,
            event.images_per_second, event.eta_seconds, event.message,
        )  # fmt: skip

    @property
    def ends_job(self) -> bool:
        """The job's last event: its state changed to succeeded, failed or cancelled."""
        return self.kind is EventKind.STATE and self.state.ended


@dataclass(frozen=True)
class JobResult:
    model: ModelRef  # the published version
    accuracy: float
    best_epoch: int
    confusion_matrix: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted

    @classmethod
    def from_proto(cls, result: Any) -> JobResult:
        flat = list(result.confusion_matrix)
        n = round(len(flat) ** 0.5)
        rows = tuple(tuple(flat[i * n : (i + 1) * n]) for i in range(n))
        return cls(ModelRef.from_proto(result.model), result.accuracy, result.best_epoch, rows)


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    model_name: str
    owner: str
    epoch: int
    total_epochs: int
    error: str  # why it failed or was cancelled
    class_counts: dict[str, int]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: JobResult | None  # once it succeeded

    @classmethod
    def from_proto(cls, job: Any) -> Job:
        result = (
            JobResult.from_proto(job.result) if job.HasField("result") and job.result.model.name else None
        )
        return cls(
            job.id, JobState.from_proto(job.state), job.spec.model_name, job.owner, job.epoch,
            job.total_epochs, job.error, dict(job.class_counts), _time(job.created_at), _time(job.started_at),
            _time(job.finished_at), result,
        )  # fmt: skip


@dataclass(frozen=True)
class JobPage:
    jobs: tuple[Job, ...]  # newest first
    next_page_token: str  # "" on the last page


@dataclass(frozen=True)
class Outcome:
    """One item of a ``*_many`` call: its input and either its result or the error it raised."""

    source: Any
    result: Any = None
    error: Exception | None = None
