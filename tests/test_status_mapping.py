"""Domain errors -> gRPC status: the table (`status_of`) and the interceptor that applies it on a real server.

The server is a bare `grpc.server` on loopback with hand-built generic handlers (bytes in, bytes out), so
these tests start in milliseconds and need no model, no service and no generated stubs.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
import pytest

from vision import errors
from vision.models.pretrained import PretrainedUnavailable
from vision.rpc.status import (
    DEADLINE_MESSAGE,
    ERROR_KIND_KEY,
    INTERNAL_MESSAGE,
    STATUS_BY_ERROR,
    ErrorMappingInterceptor,
    kind_name,
    kind_of,
    status_of,
)

pytestmark = pytest.mark.fast

Code = grpc.StatusCode

# The intended status of every error kind in vision.errors: a new kind must be added here (and to the table).
INTENDED: dict[type[errors.VisionError], grpc.StatusCode] = {
    errors.VisionError: Code.INTERNAL,
    errors.InvalidArgument: Code.INVALID_ARGUMENT,
    errors.NotFound: Code.NOT_FOUND,
    errors.Conflict: Code.FAILED_PRECONDITION,
    errors.LimitExceeded: Code.OUT_OF_RANGE,
    errors.Overloaded: Code.RESOURCE_EXHAUSTED,
    errors.StorageFull: Code.RESOURCE_EXHAUSTED,
    errors.NotReady: Code.UNAVAILABLE,
    errors.Cancelled: Code.CANCELLED,
    errors.PermissionDenied: Code.PERMISSION_DENIED,
    errors.QuotaExceeded: Code.RESOURCE_EXHAUSTED,
    errors.InvalidImage: Code.INVALID_ARGUMENT,
    errors.UnsupportedImageFormat: Code.INVALID_ARGUMENT,
    errors.ImageTooLarge: Code.INVALID_ARGUMENT,
    errors.ModelNotFound: Code.NOT_FOUND,
    errors.NoModelAvailable: Code.NOT_FOUND,
    errors.InvalidCheckpoint: Code.INVALID_ARGUMENT,
    errors.ModelLoadFailed: Code.UNAVAILABLE,
}


def error_kinds() -> list[type[errors.VisionError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.VisionError) and cls.__module__ == errors.__name__
    ]


def test_every_error_in_vision_errors_has_an_intended_status() -> None:
    assert set(error_kinds()) == set(INTENDED), "a new error kind needs its status decided here"


@pytest.mark.parametrize("kind", INTENDED, ids=lambda cls: cls.__name__)
def test_each_kind_maps_to_its_status(kind: type[errors.VisionError]) -> None:
    assert status_of(kind("message")) is INTENDED[kind]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errors.ImageTooLarge("x"), "invalid_argument"),
        (errors.ModelLoadFailed("x"), "not_ready"),
        (errors.StorageFull("x"), "storage_full"),
        (errors.Overloaded("x"), "overloaded"),
        (errors.QuotaExceeded("x"), "quota_exceeded"),
        (errors.VisionError("x"), "vision_error"),
    ],
)
def test_each_error_names_its_kind_for_clients_that_need_more_than_the_status(
    error: errors.VisionError, kind: str
) -> None:
    assert kind_name(kind_of(error)) == kind


def test_the_table_lists_only_kinds_and_maps_them_as_intended() -> None:
    assert {kind: STATUS_BY_ERROR[kind] for kind in STATUS_BY_ERROR} == {
        kind: INTENDED[kind] for kind in STATUS_BY_ERROR
    }


def test_a_service_error_takes_its_nearest_kinds_status() -> None:
    class JobNotFound(errors.NotFound):
        pass

    class StillNotFound(JobNotFound):
        pass

    class Odd(errors.VisionError):
        pass

    assert status_of(JobNotFound("job 7")) is Code.NOT_FOUND
    assert status_of(StillNotFound("job 7")) is Code.NOT_FOUND
    assert status_of(PretrainedUnavailable("offline")) is Code.UNAVAILABLE
    assert status_of(Odd("?")) is Code.INTERNAL


# -- the interceptor on a real server ----------------------------------------------------------------------
SERVICE = "test.Mapped"
SECRET = "password=hunter2 at /srv/secret/config.py line 12"


def failure(name: str) -> BaseException:
    """What the methods raise for a request ``name`` (a fresh instance each time)."""
    return {
        "invalid-image": errors.InvalidImage("not a complete image: the upload was cut short"),
        "no-model": errors.ModelNotFound("model 'cats' not found; available: dogs"),
        "conflict": errors.Conflict("job 3 already finished"),
        "too-large": errors.LimitExceeded("upload over 10 files"),
        "overloaded": errors.Overloaded("the request queue is full (2 waiting); retry shortly"),
        "not-ready": errors.NotReady("the model is still loading"),
        "timeout": FutureTimeout(),
        "bug": RuntimeError(SECRET),
        "key-bug": KeyError(SECRET),
    }[name]


def identity(data: bytes) -> bytes:
    return data


class Methods:
    """The servicer's behaviour. ``torn_down`` is set when a method's work ends after the client left;
    ``waiting`` when a method is blocked until the client goes away."""

    def __init__(self) -> None:
        self.torn_down = threading.Event()
        self.waiting = threading.Event()

    def _until_the_client_leaves(self, context: grpc.ServicerContext) -> None:
        gone = threading.Event()
        context.add_callback(gone.set)  # runs when the call ends, here by the client's cancel
        self.waiting.set()
        assert gone.wait(10), "the client never cancelled"

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"ok":
            return b"fine"
        if request == b"abort":
            context.abort(Code.PERMISSION_DENIED, "set by the method itself")
        if request == b"fail-after-cancel":  # e.g. the model call fails because its caller withdrew
            self._until_the_client_leaves(context)
            self.torn_down.set()
            raise RuntimeError(SECRET)
        raise failure(request.decode())

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        if request == b"endless":  # the server stops pulling items: the generator is closed
            try:
                while True:
                    yield b"more"
            finally:
                self.torn_down.set()
        if request == b"return-after-cancel":  # the method notices the cancel itself and returns
            self._until_the_client_leaves(context)
            self.torn_down.set()
            return
        raise failure(request.decode())

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        names = [r.decode() for r in requests]
        raise failure(names[-1])


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[grpc.Channel, Methods]]:
    methods = Methods()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            methods.unary, request_deserializer=identity, response_serializer=identity
        ),
        "ServerStream": grpc.unary_stream_rpc_method_handler(
            methods.server_stream, request_deserializer=identity, response_serializer=identity
        ),
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            methods.client_stream, request_deserializer=identity, response_serializer=identity
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorMappingInterceptor()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, methods
    server.stop(0).wait()


def call(channel: grpc.Channel, method: str) -> Any:
    kinds = {
        "Unary": channel.unary_unary,
        "ServerStream": channel.unary_stream,
        "ClientStream": channel.stream_unary,
    }
    return kinds[method](f"/{SERVICE}/{method}", request_serializer=identity, response_deserializer=identity)


DOMAIN_CASES = {
    "invalid-image": Code.INVALID_ARGUMENT,
    "no-model": Code.NOT_FOUND,
    "conflict": Code.FAILED_PRECONDITION,
    "too-large": Code.OUT_OF_RANGE,
    "overloaded": Code.RESOURCE_EXHAUSTED,
    "not-ready": Code.UNAVAILABLE,
}


@pytest.mark.parametrize("name", DOMAIN_CASES)
def test_a_domain_error_in_a_unary_method_becomes_its_status_and_message(
    served: tuple[grpc.Channel, Methods], name: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(served[0], "Unary")(name.encode(), timeout=5)
    assert caught.value.code() is DOMAIN_CASES[name]
    assert caught.value.details() == str(failure(name))
    error = failure(name)
    assert isinstance(error, errors.VisionError)
    trailing = dict(caught.value.trailing_metadata() or ())
    assert trailing[ERROR_KIND_KEY] == kind_name(kind_of(error))


def test_a_healthy_call_is_untouched(served: tuple[grpc.Channel, Methods]) -> None:
    assert call(served[0], "Unary")(b"ok", timeout=5) == b"fine"


def test_a_status_the_method_set_itself_is_kept(served: tuple[grpc.Channel, Methods]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(served[0], "Unary")(b"abort", timeout=5)
    assert caught.value.code() is Code.PERMISSION_DENIED
    assert caught.value.details() == "set by the method itself"


@pytest.mark.parametrize("name", ["no-model", "conflict"])
def test_a_domain_error_after_a_streamed_item_becomes_its_status(
    served: tuple[grpc.Channel, Methods], name: str
) -> None:
    stream = call(served[0], "ServerStream")(name.encode(), timeout=5)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for item in stream:
            received.append(item)
    assert received == [b"first"]
    assert caught.value.code() is DOMAIN_CASES[name]
    assert caught.value.details() == str(failure(name))


@pytest.mark.parametrize("name", ["too-large", "invalid-image"])
def test_a_domain_error_in_a_client_streaming_method_becomes_its_status(
    served: tuple[grpc.Channel, Methods], name: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(served[0], "ClientStream")(iter([b"part", name.encode()]), timeout=5)
    assert caught.value.code() is DOMAIN_CASES[name]
    assert caught.value.details() == str(failure(name))


@pytest.mark.parametrize("method", ["Unary", "ServerStream", "ClientStream"])
@pytest.mark.parametrize("name", ["bug", "key-bug"])
def test_an_unexpected_error_is_internal_without_internals_and_logged_with_its_traceback(
    served: tuple[grpc.Channel, Methods], method: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vision.rpc.status")
    with pytest.raises(grpc.RpcError) as caught:
        result = call(served[0], method)(
            iter([name.encode()]) if method == "ClientStream" else name.encode(), timeout=5
        )
        if method == "ServerStream":
            list(result)  # the error arrives while the stream is read
    assert caught.value.code() is Code.INTERNAL
    assert caught.value.details() == INTERNAL_MESSAGE
    assert "hunter2" not in str(caught.value.details()) and "secret" not in str(caught.value.details())
    errors_logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == 1 and errors_logged[0].exc_info is not None
    assert method in errors_logged[0].getMessage()


@pytest.mark.parametrize("method", ["Unary", "ServerStream", "ClientStream"])
def test_a_timeout_waiting_for_the_model_is_deadline_exceeded(
    served: tuple[grpc.Channel, Methods], method: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(served[0], method)(
            iter([b"timeout"]) if method == "ClientStream" else b"timeout", timeout=5
        )
        if method == "ServerStream":
            list(result)  # the error arrives while the stream is read
    assert caught.value.code() is Code.DEADLINE_EXCEEDED
    assert caught.value.details() == DEADLINE_MESSAGE


def only_info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The interceptor's log lines once one has arrived; asserts nothing was an error or had a traceback."""
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name == "vision.rpc.status"] and time.monotonic() < deadline:
        time.sleep(0.005)
    ours = [r for r in caplog.records if r.name == "vision.rpc.status"]
    assert all(r.levelno == logging.INFO for r in ours), [(r.levelname, r.getMessage()) for r in ours]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert "Traceback" not in caplog.text
    assert all("\n" not in r.getMessage() for r in ours)
    return [r.getMessage() for r in ours]


@pytest.mark.parametrize("request_name", ["endless", "return-after-cancel"])
def test_a_client_cancelling_a_stream_is_one_info_line_without_a_traceback(
    served: tuple[grpc.Channel, Methods], caplog: pytest.LogCaptureFixture, request_name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    channel, methods = served
    methods.torn_down.clear()
    methods.waiting.clear()
    stream = call(channel, "ServerStream")(request_name.encode(), timeout=10)
    assert next(stream) == b"first"
    if request_name == "endless":
        assert next(stream) == b"more"
    else:
        assert methods.waiting.wait(5)
    stream.cancel()
    assert methods.torn_down.wait(5), "the server never stopped the stream"
    assert only_info_lines(caplog) == ["ServerStream: the client cancelled the stream"]


def test_a_method_failing_after_its_client_left_is_one_info_line_without_a_traceback(
    served: tuple[grpc.Channel, Methods], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    channel, methods = served
    methods.torn_down.clear()
    methods.waiting.clear()
    pending = call(channel, "Unary").future(b"fail-after-cancel", timeout=10)
    assert methods.waiting.wait(5)
    assert pending.cancel()
    assert methods.torn_down.wait(5)
    assert only_info_lines(caplog) == ["Unary: the client went away before the answer (RuntimeError)"]
