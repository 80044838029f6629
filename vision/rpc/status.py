"""Domain errors -> gRPC status, in one table, applied to every method of a server by one interceptor.

The interceptor wraps unary and streaming handlers alike, so a generator (``WatchJob``) or a request stream
(``CreateJob``) is mapped exactly like ``Classify``. A `VisionError` aborts with its kind's status and its
message; a timeout while waiting for a model is DEADLINE_EXCEEDED; a client that went away is logged at INFO
in one line; anything else is logged with its traceback and reported as INTERNAL without internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NoReturn

import grpc

from vision import errors

log = logging.getLogger(__name__)

# The status of each kind of domain error; a subclass takes its nearest listed ancestor's.
STATUS_BY_ERROR: dict[type[errors.VisionError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LimitExceeded: grpc.StatusCode.OUT_OF_RANGE,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.VisionError: grpc.StatusCode.INTERNAL,
}
# Trailing metadata naming the kind of domain error ("limit_exceeded", "storage_full", ...): status codes are
# coarse (RESOURCE_EXHAUSTED is both a full queue and a full disk), so a client such as the gateway can tell.
ERROR_KIND_KEY = "vision-error-kind"
DEADLINE_MESSAGE = "the deadline passed before the model answered"
INTERNAL_MESSAGE = "internal error; the service logged the details"


def kind_of(error: errors.VisionError) -> type[errors.VisionError]:
    """The nearest kind of ``error`` listed in `STATUS_BY_ERROR` (VisionError itself at worst)."""
    return next(cls for cls in type(error).__mro__ if cls in STATUS_BY_ERROR)


def kind_name(kind: type[errors.VisionError]) -> str:
    """``LimitExceeded`` -> "limit_exceeded": the value sent under `ERROR_KIND_KEY`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


def status_of(error: errors.VisionError) -> grpc.StatusCode:
    """The gRPC status code for ``error``: that of the nearest kind in `STATUS_BY_ERROR`."""
    return STATUS_BY_ERROR[kind_of(error)]


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str) -> NoReturn:
    """Turn ``exc`` into the call's status; always raises (as ``context.abort`` does)."""
    if not context.is_active():  # the client cancelled or its deadline passed: nobody reads the status
        log.info("%s: the client went away before the answer (%s)", method, type(exc).__name__)
        context.abort(grpc.StatusCode.CANCELLED, "the client went away")
    if isinstance(exc, errors.VisionError):
        context.set_trailing_metadata(((ERROR_KIND_KEY, kind_name(kind_of(exc))),))
        context.abort(status_of(exc), exc.message)
    if isinstance(exc, FutureTimeout):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = getattr(context, "code", lambda: None)()
    return code is not None


def _unary_response(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            if _already_aborted(context):  # context.abort() raised inside the method: keep its status
                raise
            _abort_for(exc, context, method)

    return handle


def _stream_response(behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except GeneratorExit:  # the server stopped iterating: the client cancelled the stream
            log.info("%s: the client cancelled the stream", method)
            raise
        except Exception as exc:
            if _already_aborted(context):
                raise
            _abort_for(exc, context, method)
        else:
            if not context.is_active():  # the method noticed the cancel itself and returned
                log.info("%s: the client cancelled the stream", method)

    return handle


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Applies `STATUS_BY_ERROR` to every method of every servicer on the server, streams included."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            wrapped = _unary_response(handler.unary_unary, method)
            return handler._replace(unary_unary=wrapped)  # type: ignore[attr-defined]
        if handler.stream_unary:
            wrapped = _unary_response(handler.stream_unary, method)
            return handler._replace(stream_unary=wrapped)  # type: ignore[attr-defined]
        if handler.unary_stream:
            wrapped = _stream_response(handler.unary_stream, method)
            return handler._replace(unary_stream=wrapped)  # type: ignore[attr-defined]
        if handler.stream_stream:
            wrapped = _stream_response(handler.stream_stream, method)
            return handler._replace(stream_stream=wrapped)  # type: ignore[attr-defined]
        return handler
