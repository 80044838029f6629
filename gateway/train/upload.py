"""POST /train's body, streamed into trainer_svc's CreateJob client stream as it arrives.

The form fields (``label1..labelN``, ``epochs``, ``arch`` ...) come first and become the JobSpec, sent the
moment the first file part begins; each file then goes out as ImageChunk messages of at most `CHUNK_BYTES`
through a small bounded queue, so a slow trainer slows the upload down instead of filling memory. File
count and byte limits are checked as the bytes arrive.
"""

from __future__ import annotations

import asyncio
import queue
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import grpc

from gateway.errors import ApiError, from_rpc_error
from gateway.multipart_stream import FileData, FileEnd, FileStart, FormField, Part, parse_multipart
from vision.v1 import trainer_pb2, trainer_pb2_grpc

Message = trainer_pb2.CreateJobRequest
CHUNK_BYTES = 256 * 1024
QUEUE_DEPTH = 8  # messages in flight to the trainer: at most QUEUE_DEPTH * CHUNK_BYTES buffered
QUEUE_POLL_S = 0.005
DEFAULT_MODEL_NAME = "custom"
ARCHS = {
    "resnet18": trainer_pb2.ARCHITECTURE_RESNET18,
    "resnet50": trainer_pb2.ARCHITECTURE_RESNET50,
    "smallcnn": trainer_pb2.ARCHITECTURE_SMALLCNN,
}
OPTIMIZERS = {"adam": trainer_pb2.OPTIMIZER_ADAM, "sgd": trainer_pb2.OPTIMIZER_SGD}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
OPTIONS = (
    "model_name", "arch", "pretrained", "freeze_backbone", "epochs", "batch_size", "lr", "img_size",
    "val_split", "seed", "patience", "optimizer", "label_smoothing", "hflip",
)  # fmt: skip
_LABEL = re.compile(r"^label([1-9][0-9]{0,3})$")
_FILES = re.compile(r"^files([1-9][0-9]{0,3})$")


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def _number(fields: dict[str, str], name: str, kind: Callable[[str], float], minimum: float) -> float | None:
    """The field as a number, or None when absent (the trainer's default applies); 0 is refused where the
    contract reads 0 as 'default', so a client never gets a default it did not ask for."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise _bad(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:  # also refuses NaN
        raise _bad(f"{name} must be at least {minimum:g}" if minimum == 0 else f"{name} must be positive")
    return value


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    raw = fields.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in (*TRUE, *FALSE):
        raise _bad(f"{name} must be true or false, got {raw!r}")
    return raw in TRUE


def _choice(fields: dict[str, str], name: str, accepted: Mapping[str, int], default: str) -> int:
    value = fields.get(name, "").strip().lower() or default
    if value not in accepted:
        raise _bad(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
    return accepted[value]


def _labels(fields: dict[str, str], labels: dict[int, str]) -> list[str]:
    missing = [f"label{i}" for i in range(1, max(labels, default=0) + 1) if i not in labels]
    if missing:
        raise _bad(f"{', '.join(missing)} missing: number the classes label1..labelN without gaps")
    return [labels[i].strip() for i in range(1, len(labels) + 1)]


def build_spec(fields: dict[str, str], labels: dict[int, str]) -> trainer_pb2.JobSpec:
    """The JobSpec for the form's fields. Unset numbers are left 0: the trainer's defaults."""
    arch = _choice(fields, "arch", ARCHS, "resnet18")
    pretrained = _flag(fields, "pretrained", arch != trainer_pb2.ARCHITECTURE_SMALLCNN)
    frozen = _flag(fields, "freeze_backbone", pretrained)
    spec = trainer_pb2.JobSpec(
        model_name=fields.get("model_name", "").strip() or DEFAULT_MODEL_NAME,
        architecture=arch,  # type: ignore[arg-type]
        class_names=_labels(fields, labels),
        pretrained=pretrained,
        mode=trainer_pb2.TRAIN_MODE_FROZEN if frozen else trainer_pb2.TRAIN_MODE_FULL,
        optimizer=_choice(fields, "optimizer", OPTIMIZERS, "adam"),  # type: ignore[arg-type]
        horizontal_flip=_flag(fields, "hflip", True),
        upload=trainer_pb2.UploadedDataset(),
    )
    for name, attribute, kind, minimum in (
        ("epochs", "epochs", int, 1), ("batch_size", "batch_size", int, 1), ("img_size", "img_size", int, 1),
        ("patience", "patience", int, 1), ("seed", "seed", int, 0), ("lr", "learning_rate", float, 1e-12),
        ("val_split", "val_fraction", float, 1e-12), ("label_smoothing", "label_smoothing", float, 0),
    ):  # fmt: skip
        value = _number(fields, name, kind, minimum)
        if value is not None:
            if kind is int and not -(2**31) <= value < 2**31:
                raise _bad(f"{name} is out of range: {value}")
            setattr(spec, attribute, value)
    return spec


@dataclass
class TrainForm:
    """Turns the body's parts into CreateJob messages, enforcing the order and the limits."""

    max_files: int
    max_bytes: int
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
            self.labels[int(label.group(1))] = part.value
        else:
            self.fields[part.name] = part.value

    def _file_start(self, part: FileStart) -> list[trainer_pb2.CreateJobRequest]:
        match = _FILES.match(part.name)
        if not match:
            raise _bad(f"file field {part.name!r} is not files1..filesN")
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


def _as_aio_error(exc: grpc.RpcError) -> grpc.aio.AioRpcError:
    call = cast(grpc.Call, exc)
    return grpc.aio.AioRpcError(call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), call.details(), None)


def _on_done(call: grpc.Future) -> asyncio.Future[None]:
    """An asyncio future that completes when the gRPC call (running in gRPC's own thread) does."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def from_grpc_thread(_: grpc.Future) -> None:
        loop.call_soon_threadsafe(resolve)

    call.add_done_callback(from_grpc_thread)
    return done


async def _put(
    requests: queue.Queue[Message | None], item: Message | None, finished: asyncio.Future[None]
) -> bool:
    """Queue ``item`` for the stream, waiting while the queue is full (backpressure); False when the
    trainer has already answered (an error about the spec or a file: the rest of the body is not read)."""
    while not finished.done():
        try:
            requests.put_nowait(item)
            return True
        except queue.Full:
            await asyncio.wait({finished}, timeout=QUEUE_POLL_S)
    return False


def _unblock(requests: queue.Queue[Message | None]) -> None:
    """Let gRPC's thread, which may be waiting for the next message, see the end of the stream."""
    while True:
        try:
            requests.get_nowait()
        except queue.Empty:
            break
    requests.put_nowait(None)


async def create_job(
    target: str,
    content_type: str,
    body: AsyncIterator[bytes],
    form: TrainForm,
    *,
    timeout_s: float,
    retry_after_s: int,
) -> trainer_pb2.Job:
    """Stream the multipart ``body`` into CreateJob on ``target``; the Job the trainer created.

    The stream runs on grpc's synchronous client: when the trainer refuses an upload part-way (a bad
    label, a file that is not an image) while messages are still being written, grpc's asyncio client can
    report INTERNAL instead of the trainer's status (grpc/grpc#36066); the synchronous one reports it.
    """
    requests: queue.Queue[Message | None] = queue.Queue(maxsize=QUEUE_DEPTH)

    def messages() -> Iterator[Message]:
        while (item := requests.get()) is not None:
            yield item

    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 4 * CHUNK_BYTES)]
    ) as channel:
        call = trainer_pb2_grpc.TrainerStub(channel).CreateJob.future(messages(), timeout=timeout_s)
        finished = _on_done(call)
        try:
            sending = True
            async for part in parse_multipart(content_type, body):
                for message in form.feed(part):
                    sending = sending and await _put(requests, message, finished)
                if not sending:
                    break
            if sending:
                for message in form.finish():
                    sending = sending and await _put(requests, message, finished)
                if sending:
                    await _put(requests, None, finished)
            await finished
            return cast(trainer_pb2.Job, call.result())
        except grpc.RpcError as exc:
            raise from_rpc_error(_as_aio_error(exc), "trainer", retry_after_s) from exc
        finally:
            if not call.done():
                call.cancel()  # the body failed (a limit, malformed, client gone): the upload is dropped
            _unblock(requests)
