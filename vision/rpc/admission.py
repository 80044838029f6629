"""Admission control for a gRPC server: a bounded number of calls at once, health checks always answered.

gRPC's sync server runs every call on one thread pool and queues the rest without bound, so slow calls (a
batch of inference, a streaming upload, a long ``WatchJob``) can hold every thread while health checks wait
behind them until the probe fails. Here:

* every call except ``grpc.health.v1.Health/Check`` runs on the handler pool (`CountingExecutor`), which
  knows how many calls it holds, streams included for as long as they stream;
* a call that arrives while ``limit`` calls are in flight is refused at once with RESOURCE_EXHAUSTED (the
  ``overloaded`` kind): it never waits for a thread, and its refusal reads nothing of the request;
* ``Health/Check`` runs on threads of its own, so it never waits behind other calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import grpc

from vision.errors import Overloaded
from vision.rpc.status import ERROR_KIND_KEY, kind_name

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

P = ParamSpec("P")
T = TypeVar("T")


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts its submitted, unfinished tasks (the server's calls in flight)."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._count_lock:
            self._in_flight += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any] | None) -> None:
        with self._count_lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Calls submitted and not yet finished (queued or running)."""
        return self._in_flight


class _OnPool:
    """A method's behaviour that the gRPC server runs on ``pool`` instead of its own handler pool."""

    def __init__(self, behaviour: Callable[..., Any], pool: ThreadPoolExecutor) -> None:
        self._behaviour = behaviour
        self.experimental_thread_pool = pool  # read by grpc's server when it schedules the call

    def __call__(self, *args: Any) -> Any:
        return self._behaviour(*args)


def busy_message(limit: int) -> str:
    return f"the service is busy: {limit} calls are in progress, the most it takes at once; retry shortly"


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Refuses calls beyond ``limit`` in flight on ``calls``; runs health checks on ``health_pool``.

    Decisions are made on the server's polling thread, just before grpc submits the call to ``calls``, so
    at most ``limit`` calls ever hold or wait for a handler thread. Refusals run on ``reject_pool``, never
    read the request, and take microseconds. Put this interceptor first: it must see the final behaviours.
    """

    def __init__(
        self,
        limit: int,
        calls: CountingExecutor,
        health_pool: ThreadPoolExecutor,
        reject_pool: ThreadPoolExecutor,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._calls = calls
        self._health_pool = health_pool
        self._reject_pool = reject_pool
        self._refusal = grpc.stream_unary_rpc_method_handler(_OnPool(self._refuse, reject_pool))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler_call_details.method == HEALTH_CHECK_METHOD and handler.unary_unary is not None:
            check = _OnPool(handler.unary_unary, self._health_pool)
            return handler._replace(unary_unary=check)  # type: ignore[attr-defined, no-any-return]
        if self._calls.in_flight >= self.limit:
            return self._refusal
        return handler

    def _refuse(self, _requests: Any, context: grpc.ServicerContext) -> None:
        context.set_trailing_metadata(((ERROR_KIND_KEY, kind_name(Overloaded)),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, busy_message(self.limit))
