"""What a gRPC server records of every call: the grpc-prometheus metrics and the request id.

`CallTelemetryInterceptor` goes first among a server's interceptors, so it sees every call, those refused by
admission control included, and their final status codes. Its wrappers keep the thread pool a behaviour asks
to run on (``experimental_thread_pool``, set by `vision.rpc.admission`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from vision.telemetry.context import REQUEST_ID_METADATA, accept_request_id, request_context
from vision.telemetry.metrics import GrpcServerMetrics

# grpc-prometheus's grpc_type values, by which of the handler's behaviours is set.
_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()  # type: ignore[attr-defined]
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(code.name) if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class _Observed:
    """A behaviour wrapped to count and time its call under the request id its metadata names."""

    def __init__(
        self, behaviour: Callable[..., Any], labels: tuple[str, str, str], metrics: GrpcServerMetrics
    ) -> None:
        self._behaviour = behaviour
        self._labels = labels
        self._metrics = metrics
        self._streams = labels[0] in ("server_stream", "bidi_stream")
        pool = getattr(behaviour, "experimental_thread_pool", None)
        if pool is not None:
            self.experimental_thread_pool = pool

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._metrics.started.labels(*self._labels).inc()
        start = time.perf_counter()
        request_id = accept_request_id(_metadata_value(context, REQUEST_ID_METADATA))
        if self._streams:
            return self._stream(request, context, start, request_id)
        failed = False
        try:
            with request_context(request_id):
                return self._behaviour(request, context)
        except BaseException:
            failed = True
            raise
        finally:
            self._done(context, start, failed)

    def _stream(
        self, request: Any, context: grpc.ServicerContext, start: float, request_id: str
    ) -> Iterator[Any]:
        failed = False
        try:
            with request_context(request_id):
                yield from self._behaviour(request, context)
        except BaseException:
            failed = True
            raise
        finally:
            self._done(context, start, failed)

    def _done(self, context: grpc.ServicerContext, start: float, failed: bool) -> None:
        self._metrics.handled.labels(*self._labels, _code_name(context, failed)).inc()
        self._metrics.handling.labels(*self._labels).observe(time.perf_counter() - start)


def _metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


class CallTelemetryInterceptor(grpc.ServerInterceptor):
    """Counts and times every call of a known method (unknown ones are UNIMPLEMENTED and not labelled, so a
    client cannot grow the label sets) and makes the caller's ``x-request-id`` current while it runs."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        for attribute, grpc_type in _TYPES.items():
            behaviour = getattr(handler, attribute, None)
            if behaviour is not None:
                observed = _Observed(behaviour, (grpc_type, service, method), self._metrics)
                return handler._replace(**{attribute: observed})  # type: ignore[attr-defined, no-any-return]
        return handler
