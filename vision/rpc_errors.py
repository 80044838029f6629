"""Domain errors -> gRPC status, in one place for every servicer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import grpc

from vision.errors import VisionError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def maps_errors(method: F) -> F:
    """Decorate a servicer method: a `VisionError` aborts with its status code and message; a timeout
    while waiting for the model is DEADLINE_EXCEEDED; anything else is logged and reported as INTERNAL
    without internals (no stack trace reaches the client)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except VisionError as exc:
            context.abort(exc.code, exc.message)
        except FutureTimeout:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the model answered")
        except Exception:
            if getattr(context, "code", lambda: None)() is not None:  # context.abort() already raised
                raise
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the service logged the details")

    return wrapper  # type: ignore[return-value]
