"""POST /train's form, turned into trainer_svc's CreateJob messages as its parts stream in.

The form fields (``label1..labelN``, ``epochs``, ``arch`` ...) come first and become the JobSpec, sent the
moment the first file part begins; each file then goes out as ImageChunk messages of at most `CHUNK_BYTES`.
The gateway enforces the upload's shape and limits here (field order, labels numbered without gaps, file
count and bytes as they arrive) and converts the option strings into the proto. Whether the options make
sense (ranges, pretrained weights, label names) is the trainer's to say: it validates the JobSpec once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import ApiError, invalid_argument
from gateway.train.multipart import FieldLimits, FileData, FileEnd, FileStart, FormField, Part
from gateway.values import INT32, looks_like_integer
from vision.choices import ARCHITECTURES, OPTIMIZERS, Choices, pretrained_by_default
from vision.errors import InvalidArgument
from vision.settings import DEFAULT_MAX_CLASSES
from vision.v1 import trainer_pb2

CHUNK_BYTES = 256 * 1024
DEFAULT_MODEL_NAME = "custom"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
OPTIONS = (
    "model_name", "arch", "pretrained", "freeze_backbone", "epochs", "batch_size", "lr", "img_size",
    "val_split", "seed", "patience", "optimizer", "label_smoothing", "hflip", "nproc_per_node", "nnodes",
    "dataset", "max_images_per_class",
)  # fmt: skip
# What POST /train trains on: the uploaded images (label1..N + files1..N), or Food-101, which the trainer
# fetches with kagglehub (the form then has options only). A server-side image folder stays CLI/gRPC only:
# an HTTP caller must not name paths on the trainer's disk.
UPLOAD, FOOD101 = "upload", "food101"
HTTP_DATASETS = (UPLOAD, FOOD101)
MAX_IMAGES_PER_CLASS = 1_000_000  # Food-101 has 1,000 a class; anything above means "all" anyway
# (form field, JobSpec field, type, whether the proto reads 0 as "the trainer's default")
NUMBERS: tuple[tuple[str, str, type, bool], ...] = (
    ("epochs", "epochs", int, True), ("batch_size", "batch_size", int, True),
    ("img_size", "img_size", int, True), ("patience", "patience", int, True), ("seed", "seed", int, False),
    ("lr", "learning_rate", float, True), ("val_split", "val_fraction", float, True),
    ("label_smoothing", "label_smoothing", float, False),
)  # fmt: skip
# (form field, JobSpec field, smallest, largest): whole numbers the gateway bounds itself. nproc_per_node 0:
# the trainer's default (every GPU of its device set on CUDA, 1 on CPU); nnodes unset: 1.
BOUNDED: tuple[tuple[str, str, int, int], ...] = (
    ("nproc_per_node", "nproc_per_node", 0, 64),
    ("nnodes", "nnodes", 1, 64),
)
BOUNDED_DOC = {
    "nproc_per_node": "training processes per node, one per GPU (batch_size is per process); 0 or unset: "
    "every GPU of the trainer (1 on CPU); more than it has: 400",
    "nnodes": "nodes (Kubernetes pods) the job trains on; unset: 1; more than 1 needs the trainer's "
    "Kubernetes backend",
}
LABEL_FIELD_PATTERN = r"^label([1-9][0-9]{0,3})$"
FILES_FIELD_PATTERN = r"^files([1-9][0-9]{0,3})$"
_LABEL = re.compile(LABEL_FIELD_PATTERN)
_FILES = re.compile(FILES_FIELD_PATTERN)


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def parse_number(name: str, raw: str, kind: Callable[[str], float], zero_is_default: bool) -> float | None:
    """The field as a number for the JobSpec, or None when absent (the trainer's default applies).

    Only what cannot be encoded is refused: not a number, NaN, out of int32 range, and 0 where the
    contract reads 0 as "default" (so a client never gets a default it did not ask for).
    """
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise _bad(f"{name} must be a number, got {raw!r}") from None
    if math.isnan(value):
        raise _bad(f"{name} must be a number, got {raw!r}")
    if zero_is_default and value == 0:
        raise _bad(f"{name} must be positive (0 would mean the trainer's default: leave the field out)")
    if kind is int and value not in INT32:
        raise _bad(f"{name} is out of range: {value}")
    return value


def parse_bounded(name: str, raw: str, low: int, high: int) -> int | None:
    """A whole number in [low, high], or None when absent; 400 naming the range for anything else."""
    raw = raw.strip()
    if not raw:
        return None
    if not looks_like_integer(raw) or len(raw) > 10 or not low <= int(raw) <= high:
        raise _bad(f"{name} must be a whole number from {low} to {high}, got {raw[:20]!r}")
    return int(raw)


def parse_flag(name: str, raw: str, default: bool) -> bool:
    raw = raw.strip().lower()
    if not raw:
        return default
    if raw not in (*TRUE, *FALSE):
        raise _bad(f"{name} must be true or false, got {raw!r}")
    return raw in TRUE


def parse_choice(choices: Choices, field: str, raw: str) -> str:
    """An option name (``choices.default`` when empty); 400 naming the accepted ones for any other."""
    try:
        return choices.check(raw.strip().lower() or choices.default, field)
    except InvalidArgument as exc:
        raise invalid_argument(exc) from None


def numbered_labels(labels: dict[int, str]) -> list[str]:
    """label1..labelN in order; 400 when a number is missing."""
    missing = [f"label{i}" for i in range(1, max(labels, default=0) + 1) if i not in labels]
    if missing:
        raise _bad(f"{', '.join(missing)} missing: number the classes label1..labelN without gaps")
    return [labels[i].strip() for i in range(1, len(labels) + 1)]


def parse_dataset(fields: dict[str, str]) -> str:
    """The form's ``dataset`` (default: upload); 400 naming the accepted ones for any other."""
    dataset = fields.get("dataset", "").strip().lower() or UPLOAD
    if dataset not in HTTP_DATASETS:
        raise _bad(f"unknown dataset {dataset[:40]!r}; accepted: {', '.join(HTTP_DATASETS)}")
    return dataset


def dataset_fields(dataset: str, fields: dict[str, str], labels: dict[int, str]) -> dict[str, object]:
    """The JobSpec's dataset and class names: uploaded classes, or Food-101 (which names its own)."""
    cap = parse_bounded(
        "max_images_per_class", fields.get("max_images_per_class", ""), 0, MAX_IMAGES_PER_CLASS
    )
    if dataset == UPLOAD:
        if cap is not None:
            raise _bad("max_images_per_class applies to dataset=food101 only: upload fewer images instead")
        return {"class_names": numbered_labels(labels), "upload": trainer_pb2.UploadedDataset()}
    if labels:
        raise _bad("dataset=food101 names its own 101 classes: send no label fields (and no files)")
    return {"food101": trainer_pb2.Food101Dataset(max_images_per_class=cap or 0)}


def build_spec(fields: dict[str, str], labels: dict[int, str]) -> trainer_pb2.JobSpec:
    """The JobSpec for the form's fields. Unset numbers are left 0 and an unset optimizer or
    freeze_backbone unspecified: the trainer's defaults. ``pretrained`` (a plain bool in the proto)
    defaults to whether the architecture has ImageNet weights."""
    arch = parse_choice(ARCHITECTURES, "arch", fields.get("arch", ""))
    pretrained = parse_flag("pretrained", fields.get("pretrained", ""), pretrained_by_default(arch))
    spec = trainer_pb2.JobSpec(
        model_name=fields.get("model_name", "").strip() or DEFAULT_MODEL_NAME,
        architecture=ARCHITECTURES.to_enum(arch),  # type: ignore[arg-type]
        pretrained=pretrained,
        horizontal_flip=parse_flag("hflip", fields.get("hflip", ""), True),
        **dataset_fields(parse_dataset(fields), fields, labels),  # type: ignore[arg-type]
    )
    if fields.get("optimizer", "").strip():
        spec.optimizer = OPTIMIZERS.to_enum(parse_choice(OPTIMIZERS, "optimizer", fields["optimizer"]))  # type: ignore[assignment]
    if fields.get("freeze_backbone", "").strip():
        frozen = parse_flag("freeze_backbone", fields["freeze_backbone"], pretrained)
        spec.mode = trainer_pb2.TRAIN_MODE_FROZEN if frozen else trainer_pb2.TRAIN_MODE_FULL
    for name, attribute, kind, zero_is_default in NUMBERS:
        value = parse_number(name, fields.get(name, ""), kind, zero_is_default)
        if value is not None:
            setattr(spec, attribute, value)
    for name, attribute, low, high in BOUNDED:
        count = parse_bounded(name, fields.get(name, ""), low, high)
        if count is not None:
            setattr(spec, attribute, count)
    return spec


def field_limits(max_labels: int, max_field_bytes: int, max_form_bytes: int) -> FieldLimits:
    """The bounds on POST /train's text fields: a label or an option each, at most once each (a repeated
    field is counted again, so repeating one cannot grow the form without bound)."""
    return FieldLimits(
        max_field_bytes=max_field_bytes, max_fields=max_labels + len(OPTIONS), max_total_bytes=max_form_bytes
    )


@dataclass
class TrainForm:
    """Turns the body's parts into CreateJob messages, enforcing the order and the limits."""

    max_files: int
    max_bytes: int
    max_labels: int = DEFAULT_MAX_CLASSES
    fields: dict[str, str] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    spec_sent: bool = False
    files: int = 0
    total_bytes: int = 0
    _class: str = ""
    _name: str = ""
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, part: Part) -> list[trainer_pb2.CreateJobRequest]:
        if isinstance(part, FormField):
            self._field(part)
            return []
        if isinstance(part, FileStart):
            return self._file_start(part)
        if isinstance(part, FileData):
            return self._file_data(part.data)
        assert isinstance(part, FileEnd)
        return [self._chunk(last=True)]

    def finish(self) -> list[trainer_pb2.CreateJobRequest]:
        """After the body: the spec if no file came (the trainer then says which classes lack images)."""
        return [] if self.spec_sent else [self._spec()]

    def _spec(self) -> trainer_pb2.CreateJobRequest:
        self.spec_sent = True
        return trainer_pb2.CreateJobRequest(spec=build_spec(self.fields, self.labels))

    def _field(self, part: FormField) -> None:
        label = _LABEL.match(part.name)
        if not label and part.name not in OPTIONS:
            raise _bad(
                f"unknown form field {part.name!r}; accepted: label1..N, files1..N, {', '.join(OPTIONS)}"
            )
        if self.spec_sent:
            raise _bad(
                f"form field {part.name!r} came after the first file: send every field before the files"
            )
        if label:
            number = int(label.group(1))
            if number > self.max_labels:
                raise _bad(
                    f"{part.name}: a job has at most {self.max_labels} classes (label{self.max_labels})"
                )
            self.labels[number] = part.value
        else:
            self.fields[part.name] = part.value

    def _file_start(self, part: FileStart) -> list[trainer_pb2.CreateJobRequest]:
        match = _FILES.match(part.name)
        if not match:
            raise _bad(f"file field {part.name!r} is not files1..filesN")
        if parse_dataset(self.fields) == FOOD101:
            raise _bad("dataset=food101 trains on Food-101, which the trainer fetches: send no files")
        number = int(match.group(1))
        if number not in self.labels:
            raise _bad(f"{part.name} has no label{number}: send label{number} (before the files)")
        self.files += 1
        if self.files > self.max_files:
            raise ApiError(
                413, "payload_too_large", f"the upload has more than {self.max_files} files, the limit"
            )
        messages = [] if self.spec_sent else [self._spec()]
        self._class, self._name = self.labels[number].strip(), part.filename
        return messages

    def _file_data(self, data: bytes) -> list[trainer_pb2.CreateJobRequest]:
        self.total_bytes += len(data)
        if self.total_bytes > self.max_bytes:
            raise ApiError(
                413, "payload_too_large", f"the images add up to more than {self.max_bytes} bytes, the limit"
            )
        self._buffer += data
        messages = []
        while len(self._buffer) >= CHUNK_BYTES:
            messages.append(self._chunk(last=False, size=CHUNK_BYTES))
        return messages

    def _chunk(self, *, last: bool, size: int | None = None) -> trainer_pb2.CreateJobRequest:
        size = len(self._buffer) if size is None else size
        data, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
        chunk = trainer_pb2.ImageChunk(
            file_index=self.files - 1, class_name=self._class, file_name=self._name, data=data, last=last
        )
        return trainer_pb2.CreateJobRequest(chunk=chunk)
