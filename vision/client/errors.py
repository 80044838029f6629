"""What a failed call raises: one `ServiceError` subclass per kind of failure, carrying the service's own
message (``details``), the gRPC ``code``, the service's error ``kind`` (the ``vision-error-kind`` trailer:
RESOURCE_EXHAUSTED is a full queue, a full disk or a used-up quota) and the ``request_id`` sent.

Where a status code has one domain kind, the error is that `vision.errors` kind as well: ``except
vision.errors.InvalidArgument`` catches a service's refusal and an option the client refused itself.
"""

from __future__ import annotations

from typing import Any

import grpc

from vision import errors
from vision.rpc.status import ERROR_KIND_KEY


class ServiceError(errors.VisionError):
    """A call that did not succeed. ``details`` is the service's message (or the client's, for a request
    it refused to send); ``attempts`` how many times it was sent."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        kind: str = "",
        method: str = "",
        request_id: str = "",
        attempts: int = 1,
    ) -> None:
        self.code = code or type(self).code
        self.details = details
        self.kind = kind
        self.method = method
        self.request_id = request_id
        self.attempts = attempts
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{details} ({self.code.name})")


class InvalidArgumentError(ServiceError, errors.InvalidArgument):
    """The request is wrong (a corrupt image, an unknown option); sending it again will not help."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ServiceError, errors.NotFound):
    """No such model, version or job (or one the caller may not see)."""

    code = grpc.StatusCode.NOT_FOUND


class ConflictError(ServiceError, errors.Conflict):
    """Valid, but not now (FAILED_PRECONDITION): cancelling a job that has ended."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class LimitExceededError(ServiceError, errors.LimitExceeded):
    """Larger than a configured limit allows (OUT_OF_RANGE): too many files or bytes in an upload."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhaustedError(ServiceError):
    """The service is at its limit of calls (``kind`` "overloaded"), its disk is full ("storage_full") or
    the caller used up a quota ("quota_exceeded")."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDeniedError(ServiceError, errors.PermissionDenied):
    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class UnavailableError(ServiceError, errors.NotReady):
    """The service could not be reached (or cannot answer now), after every attempt the client made."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(ServiceError):
    """The call's deadline passed before the answer came."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CallCancelledError(ServiceError, errors.Cancelled):
    code = grpc.StatusCode.CANCELLED


class InternalError(ServiceError):
    """The service failed (INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS): its logs have the details."""

    code = grpc.StatusCode.INTERNAL


class NotConfiguredError(ServiceError):
    """The client has no address for the service a method needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        ConflictError,
        LimitExceededError,
        ResourceExhaustedError,
        PermissionDeniedError,
        UnauthenticatedError,
        UnavailableError,
        DeadlineExceededError,
        CallCancelledError,
    )
}


def error_kind(call: Any) -> str:
    """The ``vision-error-kind`` trailer of a finished call ("" when the service sent none)."""
    try:
        trailing = call.trailing_metadata() or ()
    except Exception:  # a call that never reached a server has no trailers to read
        return ""
    for key, value in trailing:
        if key == ERROR_KIND_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""


def from_rpc_error(exc: grpc.RpcError, *, method: str, request_id: str, attempts: int) -> ServiceError:
    """The typed error for a failed gRPC call (sync or asyncio)."""
    call: Any = exc
    code = call.code() if callable(getattr(call, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (call.details() if callable(getattr(call, "details", None)) else "") or code.name.lower()
    cls = _BY_CODE.get(code, InternalError)
    return cls(
        details, code=code, kind=error_kind(call), method=method, request_id=request_id, attempts=attempts
    )


def invalid_request(details: str, method: str) -> InvalidArgumentError:
    """A request the client refuses to send (an unknown option name, a number out of range)."""
    return InvalidArgumentError(details, kind="invalid_argument", method=method, attempts=0)
