"""Dynamic batching: concurrent requests grouped into one model call.

Request threads `submit()` an item and wait on the returned future; one worker thread takes whatever is
queued (up to ``max_batch_size``), waits at most ``max_delay_s`` for more while the batch is not full, and
runs ``run_batch`` once per model key. The queue is bounded: when full, `submit()` raises `Overloaded`
at once instead of letting latency grow without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vision.errors import Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One request's result plus how it was batched (wall-clock instants in `time.time_ns`, for spans)."""

    value: R
    queue_ms: float
    inference_ms: float
    batch_size: int
    first_in_batch: bool = True  # exactly one request of each batch says so (per-batch metrics)
    enqueued_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0


@dataclass
class _Pending:
    key: Hashable
    item: Any
    future: Future[Batched[Any]]
    enqueued: float = field(default_factory=time.perf_counter)
    enqueued_ns: int = field(default_factory=time.time_ns)


class DynamicBatcher(Generic[T, R]):
    """Groups items submitted from many threads into calls of ``run_batch(key, items) -> results``.

    ``key`` selects the model: items with different keys never share a call. ``run_batch`` must return one
    result per item, in order; if it raises, every item of that call gets the exception.
    """

    def __init__(
        self,
        run_batch: Callable[[Any, Sequence[T]], Sequence[R]],
        *,
        max_batch_size: int = 16,
        max_delay_s: float = 0.005,
        max_queue: int = 256,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, key: Hashable, item: T) -> Future[Batched[R]]:
        """Queue ``item`` for the model ``key``; raises `Overloaded` when the queue is full."""
        if self._closed:
            raise Overloaded("the service is shutting down; retry on another replica")
        future: Future[Batched[R]] = Future()
        try:
            self._queue.put_nowait(_Pending(key, item, future))
        except queue.Full:
            raise Overloaded(
                f"the request queue is full ({self._queue.maxsize} waiting); retry shortly"
            ) from None
        return future

    def run(self, key: Hashable, item: T, timeout: float | None = None) -> Batched[R]:
        """Submit ``item`` and wait for its result; a caller that gives up (timeout, error) withdraws it.

        ``timeout`` is capped at what the platform's locks accept (a gRPC call without a deadline reports
        ~9e18 s left, which would raise OverflowError).
        """
        if timeout is not None:
            timeout = min(timeout, threading.TIMEOUT_MAX)
        future = self.submit(key, item)
        try:
            return future.result(timeout=timeout)
        except BaseException:
            future.cancel()
            raise

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                nxt = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            groups: dict[Hashable, list[_Pending]] = {}
            for pending in batch:
                # Skip requests whose caller gave up (deadline passed, client went away).
                if pending.future.set_running_or_notify_cancel():
                    groups.setdefault(pending.key, []).append(pending)
            for key, group in groups.items():
                self._run_group(key, group)

    def _run_group(self, key: Hashable, group: list[_Pending]) -> None:
        start = time.perf_counter()
        started_ns = time.time_ns()
        try:
            results = self._run_batch(key, [p.item for p in group])
            if len(results) != len(group):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(group)} items")
        except BaseException as exc:  # delivered to every waiting caller; the worker carries on
            log.exception("batch of %d failed", len(group))
            for pending in group:
                pending.future.set_exception(exc)
            return
        done = time.perf_counter()
        finished_ns = time.time_ns()
        inference_ms = (done - start) * 1000
        for index, (pending, result) in enumerate(zip(group, results, strict=True)):
            queue_ms = (start - pending.enqueued) * 1000
            pending.future.set_result(
                Batched(
                    result,
                    queue_ms,
                    inference_ms,
                    len(group),
                    index == 0,
                    pending.enqueued_ns,
                    started_ns,
                    finished_ns,
                )
            )
