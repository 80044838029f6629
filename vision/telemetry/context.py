"""The request id: made (or taken from the client) by the gateway, carried to the services in gRPC metadata,
put on every log line of the request with its trace id, and returned in error responses."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from opentelemetry import trace

REQUEST_ID_HEADER = "X-Request-ID"  # HTTP: accepted from the client, always answered
REQUEST_ID_METADATA = "x-request-id"  # gRPC metadata key
# What a client may choose as its request id (else one is made): short, no spaces, no control characters,
# nothing a log line or a header could be split with.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")

_request_id: ContextVar[str] = ContextVar("vision_request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """``value`` when it is a usable request id, else a new one."""
    return value if value and _VALID_REQUEST_ID.fullmatch(value) else new_request_id()


def current_request_id() -> str:
    """The request id of the request being handled here ("" outside of one)."""
    return _request_id.get()


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Make ``request_id`` the current one (log lines, outgoing calls) for the ``with`` block."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        with suppress(ValueError):  # a generator closed from another context: that context never saw the id
            _request_id.reset(token)


def trace_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span as 32 and 16 hex digits; ("", "") when none is recorded."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class LogContextFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` and ``span_id`` to every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        record.trace_id, record.span_id = trace_ids()
        return True
