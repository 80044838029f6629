"""GET /jobs/{id}/events: trainer_svc's WatchJob stream relayed as Server-Sent Events, for a bounded time.

A stream lasts at most ``max_s`` (VISION_GATEWAY_EVENTS_MAX_S) and then ends; a browser's EventSource
reconnects by itself (after the ``retry`` delay sent first) with ``Last-Event-ID``, and the trainer resumes
after that event. While no event comes, a comment line every `KEEPALIVE_S` keeps proxies from closing the
connection and lets the server notice a client that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import from_rpc_error
from gateway.train.responses import sse
from vision.v1 import trainer_pb2

ENDED = (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED)
EVENT_ID_PATTERN = r"^[0-9]{0,18}$"
KEEPALIVE_S = 15.0
RECONNECT_MS = 2000  # the `retry:` an EventSource waits before reconnecting
FIRST_EVENT_WAIT_S = 1.0  # how long a running job's stream may take to start before the headers go out


class EventRelay:
    """One WatchJob call, read ahead by at most one event, relayed as SSE bytes until ``max_s`` has passed."""

    def __init__(self, call: Any, max_s: float, retry_after_s: int) -> None:
        self._call = call
        self._ends = time.monotonic() + max_s
        self._retry_after_s = retry_after_s
        self._next: asyncio.Task[Any] | None = None

    def _read(self) -> asyncio.Task[Any]:
        if self._next is None:
            self._next = asyncio.ensure_future(self._call.read())
        return self._next

    async def at_end(self, wait_s: float | None) -> bool:
        """Whether the trainer's stream is already over (a job that has ended, nothing after Last-Event-ID),
        waiting up to ``wait_s`` (None: until it answers) for its first message. A refusal in that time (an
        unknown job, the trainer at its limit of watchers) raises the HTTP error, not an error event."""
        first = self._read()
        done, _ = await asyncio.wait({first}, timeout=wait_s)
        if not done:
            return False
        try:
            return first.result() is grpc.aio.EOF  # type: ignore[attr-defined]
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "trainer", self._retry_after_s) from exc

    async def stream(self) -> AsyncIterator[bytes]:
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        try:
            while (left := self._ends - time.monotonic()) > 0:
                pending = self._read()
                done, _ = await asyncio.wait({pending}, timeout=min(KEEPALIVE_S, left))
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                self._next = None
                event = pending.result()
                if event is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                yield sse(event)
        except grpc.aio.AioRpcError as exc:  # the trainer went away: the browser reconnects and resumes
            yield f'event: error\ndata: {{"message": "{exc.code().name.lower()}"}}\n\n'.encode()

    def close(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()
        with contextlib.suppress(Exception):
            self._call.cancel()


class HeldStream(StreamingResponse):
    """A streaming response that runs ``on_close`` once it is over, however it ended (finished, failed, the
    client went away), even if its body was never started: what it holds (a slot, a gRPC call) is freed."""

    def __init__(
        self, content: AsyncIterator[bytes], *, on_close: Callable[[], object], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
