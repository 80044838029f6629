import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from vision.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Architecture(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARCHITECTURE_UNSPECIFIED: _ClassVar[Architecture]
    ARCHITECTURE_RESNET18: _ClassVar[Architecture]
    ARCHITECTURE_RESNET50: _ClassVar[Architecture]
    ARCHITECTURE_SMALLCNN: _ClassVar[Architecture]

class TrainMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIN_MODE_UNSPECIFIED: _ClassVar[TrainMode]
    TRAIN_MODE_FROZEN: _ClassVar[TrainMode]
    TRAIN_MODE_FULL: _ClassVar[TrainMode]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
ARCHITECTURE_UNSPECIFIED: Architecture
ARCHITECTURE_RESNET18: Architecture
ARCHITECTURE_RESNET50: Architecture
ARCHITECTURE_SMALLCNN: Architecture
TRAIN_MODE_UNSPECIFIED: TrainMode
TRAIN_MODE_FROZEN: TrainMode
TRAIN_MODE_FULL: TrainMode
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAM: Optimizer
OPTIMIZER_SGD: Optimizer
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class UploadedDataset(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ImageFolderDataset(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class Food101Dataset(_message.Message):
    __slots__ = ("max_images_per_class",)
    MAX_IMAGES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    max_images_per_class: int
    def __init__(self, max_images_per_class: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model_name", "architecture", "class_names", "pretrained", "mode", "epochs", "batch_size", "learning_rate", "optimizer", "val_fraction", "seed", "patience", "label_smoothing", "upload", "image_folder", "food101", "img_size", "horizontal_flip", "nproc_per_node", "nnodes")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FOLDER_FIELD_NUMBER: _ClassVar[int]
    FOOD101_FIELD_NUMBER: _ClassVar[int]
    IMG_SIZE_FIELD_NUMBER: _ClassVar[int]
    HORIZONTAL_FLIP_FIELD_NUMBER: _ClassVar[int]
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    NNODES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    architecture: Architecture
    class_names: _containers.RepeatedScalarFieldContainer[str]
    pretrained: bool
    mode: TrainMode
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Optimizer
    val_fraction: float
    seed: int
    patience: int
    label_smoothing: float
    upload: UploadedDataset
    image_folder: ImageFolderDataset
    food101: Food101Dataset
    img_size: int
    horizontal_flip: bool
    nproc_per_node: int
    nnodes: int
    def __init__(self, model_name: _Optional[str] = ..., architecture: _Optional[_Union[Architecture, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., pretrained: _Optional[bool] = ..., mode: _Optional[_Union[TrainMode, str]] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., val_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., patience: _Optional[int] = ..., label_smoothing: _Optional[float] = ..., upload: _Optional[_Union[UploadedDataset, _Mapping]] = ..., image_folder: _Optional[_Union[ImageFolderDataset, _Mapping]] = ..., food101: _Optional[_Union[Food101Dataset, _Mapping]] = ..., img_size: _Optional[int] = ..., horizontal_flip: _Optional[bool] = ..., nproc_per_node: _Optional[int] = ..., nnodes: _Optional[int] = ...) -> None: ...

class ImageChunk(_message.Message):
    __slots__ = ("file_index", "class_name", "file_name", "data", "last")
    FILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    file_index: int
    class_name: str
    file_name: str
    data: bytes
    last: bool
    def __init__(self, file_index: _Optional[int] = ..., class_name: _Optional[str] = ..., file_name: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    chunk: ImageChunk
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., chunk: _Optional[_Union[ImageChunk, _Mapping]] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("class_name", "precision", "recall", "f1", "support")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, class_name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("model", "accuracy", "per_class", "confusion_matrix", "best_epoch", "confusion_matrix_png", "training_curves_png")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_PNG_FIELD_NUMBER: _ClassVar[int]
    TRAINING_CURVES_PNG_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    accuracy: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    confusion_matrix: _containers.RepeatedScalarFieldContainer[int]
    best_epoch: int
    confusion_matrix_png: bytes
    training_curves_png: bytes
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., accuracy: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., confusion_matrix: _Optional[_Iterable[int]] = ..., best_epoch: _Optional[int] = ..., confusion_matrix_png: _Optional[bytes] = ..., training_curves_png: _Optional[bytes] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "spec", "created_at", "started_at", "finished_at", "epoch", "total_epochs", "error", "class_counts", "result", "progress", "owner")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    spec: JobSpec
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    epoch: int
    total_epochs: int
    error: str
    class_counts: _containers.ScalarMap[str, int]
    result: JobResult
    progress: JobEvent
    owner: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., error: _Optional[str] = ..., class_counts: _Optional[_Mapping[str, int]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., progress: _Optional[_Union[JobEvent, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "kind", "state", "time", "epoch", "total_epochs", "step", "steps_per_epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_second", "eta_seconds", "message", "seq")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[JobEvent.Kind]
        KIND_STATE: _ClassVar[JobEvent.Kind]
        KIND_PROGRESS: _ClassVar[JobEvent.Kind]
        KIND_EPOCH: _ClassVar[JobEvent.Kind]
        KIND_MESSAGE: _ClassVar[JobEvent.Kind]
    KIND_UNSPECIFIED: JobEvent.Kind
    KIND_STATE: JobEvent.Kind
    KIND_PROGRESS: JobEvent.Kind
    KIND_EPOCH: JobEvent.Kind
    KIND_MESSAGE: JobEvent.Kind
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobEvent.Kind
    state: JobState
    time: _timestamp_pb2.Timestamp
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
    seq: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobEvent.Kind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., step: _Optional[int] = ..., steps_per_epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., images_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class GetModelReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class GetModelReportResponse(_message.Message):
    __slots__ = ("report", "job_id")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    report: JobResult
    job_id: str
    def __init__(self, report: _Optional[_Union[JobResult, _Mapping]] = ..., job_id: _Optional[str] = ...) -> None: ...
