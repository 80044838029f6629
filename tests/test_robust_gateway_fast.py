"""The gateway's robustness rules that need no service: how gRPC failures become HTTP answers (error kinds,
size refusals), strict number parsing, bounded form fields, ``filename*`` parts, and an OpenAPI document that
says what the server checks. (The behaviour against real services is in tests/test_robust_gateway.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.config import GatewaySettings
from gateway.errors import ApiError, from_rpc_error
from gateway.main import create_app
from gateway.routers.detect import parse_classes
from gateway.routers.explain import build_request
from gateway.train.form import TrainForm, field_limits
from gateway.train.multipart import FieldLimits, FileStart, FormField, Part, parse_multipart
from vision.rpc.status import ERROR_KIND_KEY

pytestmark = pytest.mark.fast


def rpc_error(code: grpc.StatusCode, details: str, kind: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((ERROR_KIND_KEY, kind)) if kind else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)


# -- gRPC failures -> HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "details",
    ["Sent message larger than max (116656765 vs. 22020096)", "Received message larger than max (5 vs. 4)"],
)
def test_a_grpc_message_over_the_size_limit_is_413_with_a_plain_message_never_429(details: str) -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details), "detector", 1)
    assert (error.status, error.code) == (413, "payload_too_large")
    assert "larger than max" not in error.message and "vs." not in error.message
    assert "Retry-After" not in error.headers


def test_a_limit_the_service_enforces_is_413() -> None:
    details = "the upload has more than 10 files, the limit"
    error = from_rpc_error(rpc_error(grpc.StatusCode.OUT_OF_RANGE, details, "limit_exceeded"), "trainer", 1)
    assert (error.status, error.code, error.message) == (413, "payload_too_large", details)


def test_a_full_disk_is_507_saying_nothing_was_kept() -> None:
    details = "the disk is full"
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, details, "storage_full"), "trainer", 1
    )
    assert (error.status, error.code) == (507, "insufficient_storage")
    assert "nothing was kept" in error.message and "Retry-After" not in error.headers


def test_an_overloaded_service_is_429_with_retry_after() -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", "overloaded"), "x", 3)
    assert (error.status, error.headers) == (429, {"Retry-After": "3"})


def test_an_internal_failure_is_502_with_an_error_id_and_no_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.INTERNAL, "KeyError: '/srv/models/x'"), "classifier", 1)
    assert error.status == 502 and "/srv" not in error.message
    error_id = error.message.split("error id ")[1].split(";")[0]
    assert any(error_id in record.getMessage() and "/srv" in record.getMessage() for record in caplog.records)


# -- strict numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["99999999999", "2147483648", "-2147483649", "9" * 5000])
def test_an_explain_target_class_beyond_int32_is_a_400_naming_the_field(text: str) -> None:
    with pytest.raises(ApiError) as raised:
        build_request(
            b"x",
            method="gradcam",
            target_class=text,
            layer="",
            alpha=0.5,
            colormap="jet",
            model="",
            version="",
        )
    assert raised.value.status == 400 and "target_class is out of range" in raised.value.message


@pytest.mark.parametrize("text", ["--1", "\u00b2", "1.5", "+-2"])
def test_an_explain_target_class_that_is_not_a_plain_integer_is_a_label(text: str) -> None:
    request = build_request(
        b"x", method="gradcam", target_class=text, layer="", alpha=0.5, colormap="jet", model="", version=""
    )
    assert request.target_label == text and not request.HasField("target_class_id")


def test_detect_classes_take_ascii_integers_as_ids_and_refuse_int32_overflow() -> None:
    assert parse_classes("0, +2, -1, \u00b2, --1, bus") == ([0, 2, -1], ["\u00b2", "--1", "bus"])
    with pytest.raises(ApiError) as raised:
        parse_classes("1, 99999999999")
    assert raised.value.status == 400 and "classes" in raised.value.message


# -- bounded form fields -------------------------------------------------------------------------------------


def parse(body: bytes, limits: FieldLimits) -> list[Part]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    async def collect() -> list[Part]:
        return [part async for part in parse_multipart("multipart/form-data; boundary=b", chunks(), limits)]

    return asyncio.run(collect())


def text_fields(fields: list[tuple[str, bytes]]) -> bytes:
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (n.encode(), v) for n, v in fields
    ]
    return b"".join(parts) + b"--b--\r\n"


def test_a_text_field_longer_than_the_limit_is_refused_while_it_streams() -> None:
    limits = FieldLimits(max_field_bytes=100, max_fields=10, max_total_bytes=10_000)
    with pytest.raises(ApiError) as raised:
        parse(text_fields([("label1", b"x" * 65_000)]), limits)
    assert raised.value.status == 400 and "longer than 100 bytes" in raised.value.message


def test_text_fields_beyond_the_total_bytes_are_413() -> None:
    limits = FieldLimits(max_field_bytes=1000, max_fields=10_000, max_total_bytes=5_000)
    with pytest.raises(ApiError) as raised:
        parse(text_fields([(f"label{i}", b"y" * 900) for i in range(1, 20)]), limits)
    assert raised.value.status == 413 and "5000 bytes" in raised.value.message


def test_more_text_fields_than_labels_and_options_are_refused() -> None:
    limits = field_limits(max_labels=3, max_field_bytes=100, max_form_bytes=100_000)
    fields = [("label1", b"a")] * (3 + 20)  # one label repeated: still counted each time
    with pytest.raises(ApiError) as raised:
        parse(text_fields(fields), limits)
    assert raised.value.status == 400 and "text fields" in raised.value.message


def test_a_label_numbered_beyond_the_class_limit_is_refused_at_once() -> None:
    form = TrainForm(max_files=10, max_bytes=1000, max_labels=5)
    form.feed(FormField("label5", "ok"))
    with pytest.raises(ApiError) as raised:
        form.feed(FormField("label6", "too many"))
    assert raised.value.status == 400 and "at most 5 classes" in raised.value.message


def test_a_part_with_only_an_extended_filename_is_a_file_not_a_text_field() -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"files1\"; filename*=utf-8''caf%C3%A9%20..0.png\r\n"
        b"Content-Type: image/png\r\n\r\n\x89PNG\xff\xfe\r\n--b--\r\n"
    )
    parts = parse(body, FieldLimits(max_field_bytes=10, max_fields=1, max_total_bytes=10))
    assert parts[0] == FileStart("files1", "caf\u00e9 ..0.png")


# -- the OpenAPI document says what the server checks --------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> Iterator[dict]:  # type: ignore[type-arg]
    with TestClient(create_app(GatewaySettings(classifier_addr="127.0.0.1:9"))) as client:
        yield client.get("/openapi.json").json()


def test_the_train_form_documents_numbered_labels_and_files_and_refuses_other_fields(openapi: dict) -> None:  # type: ignore[type-arg]
    schema = openapi["paths"]["/train"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["additionalProperties"] is False
    patterns = schema["patternProperties"]
    label = next(v for k, v in patterns.items() if k.startswith("^label"))
    files = next(v for k, v in patterns.items() if k.startswith("^files"))
    assert label["minLength"] == 1 and label["maxLength"] == 100
    assert files["minItems"] == 1 and files["items"]["minLength"] == 1
    assert schema["properties"]["epochs"]["minimum"] == 1


def test_the_jobs_listing_documents_its_page_bounds(openapi: dict) -> None:  # type: ignore[type-arg]
    params = {p["name"]: p["schema"] for p in openapi["paths"]["/jobs"]["get"]["parameters"]}
    assert (params["page_size"]["minimum"], params["page_size"]["maximum"]) == (1, 500)
    assert params["page_token"]["pattern"] == r"^[0-9]{0,18}$"


def test_detect_documents_its_ranges(openapi: dict) -> None:  # type: ignore[type-arg]
    body = openapi["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = body["$ref"].rsplit("/", 1)[1]
    props = openapi["components"]["schemas"][ref]["properties"]
    conf = next(s for s in props["conf"]["anyOf"] if s.get("type") == "number")
    imgsz = next(s for s in props["imgsz"]["anyOf"] if s.get("type") == "integer")
    assert (conf["minimum"], conf["maximum"]) == (0, 1) and imgsz["multipleOf"] == 32
