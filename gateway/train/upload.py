"""POST /train's body, streamed into trainer_svc's CreateJob client stream as it arrives.

`TrainForm` turns the multipart parts into CreateJob messages; they go to the trainer through a small
bounded queue, so a slow trainer slows the upload down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import grpc

from gateway.auth.context import caller_metadata
from gateway.errors import from_rpc_error
from gateway.train.form import CHUNK_BYTES, TrainForm
from gateway.train.multipart import FieldLimits, parse_multipart
from vision.v1 import trainer_pb2, trainer_pb2_grpc

Message = trainer_pb2.CreateJobRequest
QUEUE_DEPTH = 8  # messages in flight to the trainer: at most QUEUE_DEPTH * CHUNK_BYTES buffered
# The sending side's channel must accept a whole chunk message (the chunk plus its small fields).
UPLOAD_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 4 * CHUNK_BYTES)]


def _as_aio_error(exc: grpc.RpcError) -> grpc.aio.AioRpcError:
    """The synchronous call's error in the asyncio client's shape, trailing metadata (the error kind) kept."""
    call = cast(grpc.Call, exc)
    trailing = grpc.aio.Metadata(*(call.trailing_metadata() or ()))
    return grpc.aio.AioRpcError(call.code(), grpc.aio.Metadata(), trailing, call.details(), None)


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


class Outbox:
    """The request stream of one CreateJob call: the event loop puts messages, gRPC's sending thread takes
    them. Bounded (backpressure); the thread wakes the loop each time it takes one, so nothing polls."""

    def __init__(self, depth: int = QUEUE_DEPTH) -> None:
        self._queue: queue.Queue[Message | None] = queue.Queue(maxsize=depth)
        self._loop = asyncio.get_running_loop()
        self._space = asyncio.Event()

    def messages(self) -> Iterator[Message]:
        """The request iterator gRPC's thread reads, until `close`."""
        while (item := self._queue.get()) is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody waits any more
                self._loop.call_soon_threadsafe(self._space.set)
            yield item

    async def put(self, item: Message | None, finished: asyncio.Future[None]) -> bool:
        """Queue ``item``, waiting while the queue is full; False when the trainer has already answered
        (an error about the spec or a file: the rest of the body is not read)."""
        while not finished.done():
            self._space.clear()
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                space = asyncio.ensure_future(self._space.wait())
                waiting: set[asyncio.Future[Any]] = {finished, space}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                space.cancel()
        return False

    def close(self) -> None:
        """Let gRPC's thread, which may be waiting for the next message, see the end of the stream."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(None)


class CreateJobCall:
    """The CreateJob call behind one POST /train, opened with its first message (the JobSpec, made once the
    form fields are parsed): a client that sends headers and then nothing, or only form fields slowly,
    holds no trainer thread."""

    def __init__(self, channel: grpc.Channel, timeout_s: float) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self.call: grpc.Future | None = None
        self._outbox: Outbox | None = None
        self._finished: asyncio.Future[None] | None = None

    async def send(self, message: Message | None) -> bool:
        """Queue ``message`` (None: the end of the stream); False once the trainer has answered."""
        if self._outbox is None or self._finished is None:
            self._outbox = Outbox()
            stub = trainer_pb2_grpc.TrainerStub(self._channel)
            self.call = stub.CreateJob.future(
                self._outbox.messages(), timeout=self._timeout_s, metadata=caller_metadata()
            )
            self._finished = _on_done(self.call)
        return await self._outbox.put(message, self._finished)

    async def result(self) -> trainer_pb2.Job:
        assert self.call is not None and self._finished is not None
        await self._finished
        return cast(trainer_pb2.Job, self.call.result())

    def close(self) -> None:
        if self.call is not None and not self.call.done():
            self.call.cancel()  # the body failed (a limit, malformed, client gone): the upload is dropped
        if self._outbox is not None:
            self._outbox.close()


async def create_job(
    channel: grpc.Channel,
    content_type: str,
    body: AsyncIterator[bytes],
    form: TrainForm,
    *,
    limits: FieldLimits,
    timeout_s: float,
    retry_after_s: int,
) -> trainer_pb2.Job:
    """Stream the multipart ``body`` into CreateJob over ``channel``; the Job the trainer created.

    The call is opened only when the form fields have been parsed (at the first file, or at the end of a
    body without files), and its deadline ``timeout_s`` counts from then.

    ``channel`` is a synchronous one (opened once, in `Backends`): when the trainer refuses an upload
    part-way (a bad label, a file that is not an image) while messages are still being written, grpc's
    asyncio client can report INTERNAL instead of the trainer's status (grpc/grpc#36066); the synchronous
    one reports it.
    """
    upload = CreateJobCall(channel, timeout_s)
    try:
        sending = True
        async for part in parse_multipart(content_type, body, limits):
            for message in form.feed(part):
                sending = sending and await upload.send(message)
            if not sending:
                break
        if sending:
            for message in form.finish():
                sending = sending and await upload.send(message)
            if sending:
                await upload.send(None)
        return await upload.result()
    except grpc.RpcError as exc:
        raise from_rpc_error(_as_aio_error(exc), "trainer", retry_after_s) from exc
    finally:
        upload.close()
