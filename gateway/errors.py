"""Every error the gateway returns, in one shape and mapped in one place:
``{"success": false, "error": {"code": "...", "message": "..."}}`` -- never a stack trace."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.responses import ErrorBody, ErrorDetail
from gateway.telemetry import record_upstream_error
from vision.errors import InvalidArgument, LimitExceeded, QuotaExceeded, StorageFull
from vision.rpc.status import ERROR_KIND_KEY, kind_name
from vision.telemetry.context import current_request_id

log = logging.getLogger(__name__)

# The domain kinds (`vision.rpc.status.ERROR_KIND_KEY`) whose HTTP status differs from their gRPC code's.
KIND_TO_HTTP: dict[str, tuple[int, str]] = {
    kind_name(LimitExceeded): (413, "payload_too_large"),
    kind_name(StorageFull): (507, "insufficient_storage"),
    kind_name(QuotaExceeded): (429, "quota_exceeded"),
}
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


class ApiError(Exception):
    """An error to report to the client as-is."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON of an `ErrorBody`, with the request's id (to find its log lines)."""
    detail = ErrorDetail(code=code, message=message, request_id=current_request_id() or None)
    return ErrorBody(error=detail).model_dump(mode="json", exclude_none=True)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def invalid_argument(exc: InvalidArgument) -> ApiError:
    """400 for a value the gateway cannot put into the request (e.g. an unknown enum name)."""
    return ApiError(400, "invalid_argument", exc.message)


def error_kind(exc: grpc.aio.AioRpcError) -> str:
    """The domain error kind a service named in its trailing metadata ("limit_exceeded" ...), or ''."""
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == ERROR_KIND_KEY:
            return value if isinstance(value, str) else bytes(value).decode("ascii", "replace")
    return ""


def _too_large(exc: grpc.aio.AioRpcError) -> bool:
    """gRPC's own refusal of a message over a channel's or server's size limit (no domain kind): the text is
    "Sent message larger than max (N vs. M)" or "Received message larger than max ..."."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or "")


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str, retry_after_s: int) -> ApiError:
    """The HTTP error for a failed gRPC call to ``service``.

    The domain kind in the trailing metadata refines the status: a limit is 413 (not 400), a full disk 507
    (not 429). A message refused by gRPC for its size is 413 with a plain message, never 429 (retrying does
    not help) and never gRPC's own text; a failure inside the service is 502 with an error id to quote.
    """
    code = exc.code()
    record_upstream_error(service, code.name)
    kind = error_kind(exc)
    status = GRPC_TO_HTTP.get(code, 502)
    message = exc.details() or code.name.lower()
    name = code.name.lower()
    headers = {}
    if kind in KIND_TO_HTTP:
        status, name = KIND_TO_HTTP[kind]
        if status == 507:
            message = f"the {service} service has no disk space left; nothing was kept. {message}"
    elif _too_large(exc):
        log.warning("%s: a message over gRPC's size limit: %s", service, exc.details())
        status, name = 413, "payload_too_large"
        message = (
            f"the request or its answer is larger than the {service} service accepts; send a smaller one"
        )
    elif code == grpc.StatusCode.UNAVAILABLE:
        message = f"the {service} service is unavailable; try again shortly"
        log.warning("%s unavailable: %s", service, exc.details())
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the {service} service did not answer in time; try again"
    elif status == 502:
        error_id = secrets.token_hex(4)
        log.error("error %s: %s failed: %s %s", error_id, service, code, exc.details())
        message = f"the {service} service failed (error id {error_id}; the gateway logged the details)"
    if status == 429:
        headers["Retry-After"] = str(retry_after_s)
    return ApiError(status, name, message, headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or "request"
        if err.get("type") == "missing":
            parts.append(f"missing field '{field}'")
        else:
            parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error; the gateway logged the details")
