"""The principal of the request being handled, for the code that calls the services (`gateway.backends`
puts it into each call's gRPC metadata). Set by `gateway.auth.middleware` for the request's task."""

from __future__ import annotations

from contextvars import ContextVar

from vision.security.principal import Principal
from vision.telemetry.context import REQUEST_ID_METADATA, current_request_id

_current: ContextVar[Principal | None] = ContextVar("vision_principal", default=None)


def current_principal() -> Principal | None:
    return _current.get()


def caller_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata naming the current request's principal and its request id (none outside a request)."""
    principal = _current.get()
    request_id = current_request_id()
    return (*(principal.metadata() if principal is not None else ()),) + (
        ((REQUEST_ID_METADATA, request_id),) if request_id else ()
    )


def set_principal(principal: Principal | None) -> object:
    return _current.set(principal)


def reset_principal(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
