"""The gateway's fast layer: no service, no uvicorn. gRPC status -> HTTP status, POST /train's form and
multipart parsing, the response bodies built from protos, the settings, and an OpenAPI document that names
a schema for every body. The app runs in-process (FastAPI's TestClient); its gRPC channels connect lazily,
so no request here reaches a service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.config import GatewaySettings
from gateway.errors import GRPC_TO_HTTP, ApiError, from_rpc_error
from gateway.main import create_app
from gateway.responses import ModelInfo
from gateway.routers.detect import parse_classes
from gateway.train.form import CHUNK_BYTES, TrainForm, build_spec, field_limits
from gateway.train.multipart import (
    FieldLimits,
    FileData,
    FileEnd,
    FileStart,
    FormField,
    Part,
    parse_multipart,
)
from gateway.train.responses import Job
from vision.choices import ARCHITECTURES, CAM_METHODS, COLORMAPS, OPTIMIZERS
from vision.v1 import common_pb2, models_pb2, trainer_pb2

pytestmark = pytest.mark.fast
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
NOT_JSON = {
    "/jobs/{job_id}/events": "text/event-stream",
    "/models/{name}/versions/{version}/{image}.png": "image/png",
}


def rpc_error(code: grpc.StatusCode, details: str = "details") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


# -- gRPC status -> HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.CANCELLED, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
        (grpc.StatusCode.UNKNOWN, 502),
        (grpc.StatusCode.DATA_LOSS, 502),
    ],
)
def test_each_grpc_status_becomes_its_http_status_with_the_code_name(
    code: grpc.StatusCode, status: int
) -> None:
    error = from_rpc_error(rpc_error(code), "classifier", retry_after_s=7)
    assert GRPC_TO_HTTP.get(code, 502) == status
    assert (error.status, error.code) == (status, code.name.lower())


def test_the_services_message_reaches_the_client_for_a_4xx() -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "model 'x' not found"), "classifier", 1)
    assert error.message == "model 'x' not found"


def test_overloaded_answers_carry_the_configured_retry_after() -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), "classifier", retry_after_s=7)
    assert error.headers == {"Retry-After": "7"}


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, "the trainer service is unavailable; try again shortly"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "the trainer service did not answer in time; try again"),
        (grpc.StatusCode.INTERNAL, "the trainer service failed (error id "),
    ],
)
def test_transport_and_internal_failures_get_a_message_that_hides_the_details(
    code: grpc.StatusCode, message: str
) -> None:
    error = from_rpc_error(rpc_error(code, "Traceback (most recent call last)"), "trainer", 1)
    assert error.message.startswith(message) and error.headers == {}
    assert "Traceback" not in error.message


# -- the app in-process: errors and OpenAPI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = GatewaySettings(classifier_addr="127.0.0.1:9", max_image_bytes=1024)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict:  # type: ignore[type-arg]
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def operations(openapi: dict) -> Iterator[tuple[str, str, dict]]:  # type: ignore[type-arg]
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_openapi_names_a_json_schema_for_every_success_body(openapi: dict) -> None:  # type: ignore[type-arg]
    for path, method, operation in operations(openapi):
        # 204 (no body) only where the event stream has nothing left to send
        success = [status for status in operation["responses"] if status.startswith("2") and status != "204"]
        assert len(success) == 1, (method, path)
        content = operation["responses"][success[0]]["content"]
        if path in NOT_JSON:
            assert list(content) == [NOT_JSON[path]], (method, path, content)
            continue
        ref = content["application/json"]["schema"].get("$ref", "")
        assert ref.startswith("#/components/schemas/"), (method, path, content)
        assert ref.rsplit("/", 1)[1] in openapi["components"]["schemas"]


def test_openapi_describes_every_error_as_the_error_body_and_never_422(openapi: dict) -> None:  # type: ignore[type-arg]
    for path, method, operation in operations(openapi):
        errors = {status: r for status, r in operation["responses"].items() if status[0] in "45"}
        assert "422" not in errors and "500" in errors, (method, path)
        for status, response in errors.items():
            if (path, status) == ("/health", "503"):  # degraded health is a report, not an error
                continue
            assert response["content"]["application/json"]["schema"] == ERROR_BODY, (method, path, status)
    body = openapi["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error"} and body["properties"]["success"]["const"] is False
    assert openapi["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message"]


def test_openapi_enums_are_the_choices_of_vision_choices(openapi: dict) -> None:  # type: ignore[type-arg]
    schemas = openapi["components"]["schemas"]
    explain = schemas["Body_explain_explain_post"]["properties"]
    assert explain["method"]["enum"] == list(CAM_METHODS.names)
    assert explain["colormap"]["enum"] == list(COLORMAPS.names)
    train = openapi["paths"]["/train"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert train["properties"]["arch"]["enum"] == list(ARCHITECTURES.names)
    assert train["properties"]["optimizer"]["enum"] == list(OPTIMIZERS.names)
    assert schemas["ModelInfo"]["properties"]["load_error"]["type"] == "string"


def test_openapi_describes_the_data_of_each_training_event(openapi: dict) -> None:  # type: ignore[type-arg]
    stream = openapi["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    event = stream["text/event-stream"]["schema"]  # one event: {event, id, retry, data}
    assert set(event["properties"]["event"]["enum"]) == {"state", "message", "progress", "epoch", "error"}
    data = event["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    refs = [one["$ref"].rsplit("/", 1)[1] for one in data["contentSchema"]["anyOf"] if "$ref" in one]
    assert refs == ["JobEvent", "ProgressEvent"]
    progress = openapi["components"]["schemas"]["ProgressEvent"]["properties"]
    assert {"job_id", "kind", "status", "epoch", "fraction", "val_accuracy", "eta_seconds"} <= progress.keys()


@pytest.mark.parametrize(
    ("method", "url", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("PUT", "/predict", 405, "method_not_allowed"),
        ("POST", "/predict", 400, "invalid_request"),  # no file field
        ("POST", "/train", 503, "not_deployed"),
        ("GET", "/jobs", 503, "not_deployed"),
    ],
)
def test_errors_answered_by_the_gateway_itself_have_the_error_body(
    client: TestClient, method: str, url: str, status: int, code: str
) -> None:
    response = client.request(method, url)
    assert response.status_code == status
    assert response.json()["success"] is False and response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message", "request_id"}
    assert response.json()["error"]["request_id"] == response.headers["X-Request-ID"]


def test_a_body_over_the_limit_is_413_with_the_error_body(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("a.jpg", bytes(200_000), "image/jpeg")})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


# -- POST /train's form -> JobSpec ---------------------------------------------------------------------------

LABELS = {1: "cat", 2: "dog"}


def test_unset_options_are_left_to_the_trainer_except_pretrained_which_follows_the_architecture() -> None:
    spec = build_spec({}, LABELS)
    assert spec.architecture == trainer_pb2.ARCHITECTURE_RESNET18 and spec.pretrained is True
    assert (
        spec.mode == trainer_pb2.TRAIN_MODE_UNSPECIFIED
        and spec.optimizer == trainer_pb2.OPTIMIZER_UNSPECIFIED
    )
    assert (spec.epochs, spec.batch_size, spec.learning_rate, spec.img_size) == (0, 0, 0.0, 0)
    assert spec.model_name == "custom" and list(spec.class_names) == ["cat", "dog"]
    assert spec.horizontal_flip is True and spec.WhichOneof("dataset") == "upload"
    assert build_spec({"arch": "smallcnn"}, LABELS).pretrained is False


def test_given_options_are_converted_into_the_job_spec() -> None:
    fields = {
        "arch": "ResNet50", "pretrained": "no", "freeze_backbone": "false", "optimizer": "sgd",
        "epochs": "3", "lr": "0.01", "val_split": "0.25", "seed": "0", "label_smoothing": "0",
        "hflip": "off", "model_name": " m ",
    }  # fmt: skip
    spec = build_spec(fields, LABELS)
    assert spec.architecture == trainer_pb2.ARCHITECTURE_RESNET50 and spec.pretrained is False
    assert spec.mode == trainer_pb2.TRAIN_MODE_FULL and spec.optimizer == trainer_pb2.OPTIMIZER_SGD
    assert spec.epochs == 3 and spec.learning_rate == pytest.approx(0.01)
    assert spec.val_fraction == pytest.approx(0.25) and spec.horizontal_flip is False
    assert spec.model_name == "m"


def test_values_the_proto_can_carry_are_passed_on_for_the_trainer_to_judge() -> None:
    spec = build_spec({"epochs": "-3", "lr": "50", "img_size": "8"}, LABELS)
    assert (spec.epochs, spec.learning_rate, spec.img_size) == (-3, 50.0, 8)


@pytest.mark.parametrize(
    ("fields", "labels", "fragment"),
    [
        ({"arch": "vgg16"}, LABELS, "unknown arch 'vgg16'; accepted: resnet18, resnet50, smallcnn"),
        ({"optimizer": "rmsprop"}, LABELS, "unknown optimizer 'rmsprop'; accepted: adam, sgd"),
        ({"epochs": "0"}, LABELS, "epochs must be positive"),
        ({"lr": "fast"}, LABELS, "lr must be a number"),
        ({"lr": "nan"}, LABELS, "lr must be a number"),
        ({"epochs": "2.5"}, LABELS, "epochs must be a number"),
        ({"seed": str(2**31)}, LABELS, "seed is out of range"),
        ({"pretrained": "maybe"}, LABELS, "pretrained must be true or false"),
        ({}, {1: "cat", 3: "bird"}, "label2 missing"),
    ],
)
def test_values_that_cannot_be_encoded_are_400(
    fields: dict[str, str], labels: dict[int, str], fragment: str
) -> None:
    with pytest.raises(ApiError) as raised:
        build_spec(fields, labels)
    assert (raised.value.status, raised.value.code) == (400, "invalid_argument")
    assert fragment in raised.value.message


def feed(form: TrainForm, parts: list[Part]) -> list[trainer_pb2.CreateJobRequest]:
    return [message for part in parts for message in form.feed(part)] + form.finish()


def test_the_spec_goes_first_then_each_file_in_chunks_with_the_last_one_marked() -> None:
    big = bytes(CHUNK_BYTES + 10)
    parts: list[Part] = [FormField("label1", "cat"), FormField("label2", "dog"), FormField("epochs", "2")]
    parts += [FileStart("files1", "a.png"), FileData(big[:100]), FileData(big[100:]), FileEnd()]
    parts += [FileStart("files2", "b.png"), FileData(b"xyz"), FileEnd()]
    messages = feed(TrainForm(max_files=10, max_bytes=10**9), parts)
    assert messages[0].spec.epochs == 2 and list(messages[0].spec.class_names) == ["cat", "dog"]
    chunks = [m.chunk for m in messages[1:]]
    assert [(c.file_index, c.class_name, c.file_name, len(c.data), c.last) for c in chunks] == [
        (0, "cat", "a.png", CHUNK_BYTES, False),
        (0, "cat", "a.png", 10, True),
        (1, "dog", "b.png", 3, True),
    ]


@pytest.mark.parametrize(
    ("parts", "status", "fragment"),
    [
        ([FormField("epoch", "3")], 400, "unknown form field 'epoch'"),
        ([FormField("label1", "cat"), FileStart("files2", "a.png")], 400, "files2 has no label2"),
        ([FormField("label1", "cat"), FileStart("images", "a.png")], 400, "is not files1..filesN"),
        (
            [FormField("label1", "cat"), FileStart("files1", "a.png"), FileEnd(), FormField("seed", "1")],
            400,
            "came after the first file",
        ),
        (
            [FormField("label1", "c"), *[FileStart("files1", "a.png"), FileEnd()] * 3],
            413,
            "more than 2 files",
        ),
        (
            [FormField("label1", "c"), FileStart("files1", "a.png"), FileData(bytes(101))],
            413,
            "more than 100 bytes",
        ),
    ],
)
def test_the_form_refuses_bad_order_and_names_and_enforces_the_limits_as_parts_arrive(
    parts: list[Part], status: int, fragment: str
) -> None:
    with pytest.raises(ApiError) as raised:
        feed(TrainForm(max_files=2, max_bytes=100), parts)
    assert raised.value.status == status and fragment in raised.value.message


# -- multipart, streamed -------------------------------------------------------------------------------------


LIMITS = field_limits(max_labels=1000, max_field_bytes=1024, max_form_bytes=256 * 1024)


def parse(content_type: str, body: bytes, piece: int = 7, limits: FieldLimits = LIMITS) -> list[Part]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    async def collect() -> list[Part]:
        return [part async for part in parse_multipart(content_type, chunks(), limits)]

    return asyncio.run(collect())


BODY = (
    b'--b\r\nContent-Disposition: form-data; name="label1"\r\n\r\ncat\r\n'
    b'--b\r\nContent-Disposition: form-data; name="files1"; filename="a.png"\r\n'
    b"Content-Type: image/png\r\n\r\n0123456789\r\n--b--\r\n"
)


def test_multipart_parts_come_in_body_order_whatever_the_chunking() -> None:
    for piece in (1, 7, len(BODY)):
        parts = parse("multipart/form-data; boundary=b", BODY, piece)
        data = b"".join(p.data for p in parts if isinstance(p, FileData))
        assert [p for p in parts if not isinstance(p, FileData)] == [
            FormField("label1", "cat"),
            FileStart("files1", "a.png"),
            FileEnd(),
        ]
        assert data == b"0123456789"


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data; boundary=b", BODY[:-9], "ended early"),
    ],
)
def test_a_body_that_is_not_a_whole_multipart_form_is_400(
    content_type: str, body: bytes, fragment: str
) -> None:
    with pytest.raises(ApiError) as raised:
        parse(content_type, body)
    assert raised.value.status == 400 and fragment in raised.value.message


# -- bodies from protos, detect's classes, settings ----------------------------------------------------------


def test_a_job_lists_its_model_links_only_once_it_has_published_a_model() -> None:
    job = trainer_pb2.Job(id="j1", state=trainer_pb2.JOB_STATE_RUNNING)
    body = Job.from_proto(job).model_dump(mode="json", by_alias=True)
    assert body["status"] == "running" and body["arch"] == "resnet18" and body["model"] is None
    assert body["status_url"] == "/jobs/j1" and "report_url" not in body
    job.state = trainer_pb2.JOB_STATE_SUCCEEDED
    job.result.model.CopyFrom(common_pb2.ModelRef(name="m", version="2"))
    body = Job.from_proto(job).model_dump(mode="json", by_alias=True)
    assert body["model"] == {"name": "m", "version": "2"}
    assert body["report_url"] == "/models/m/versions/2/report"


def test_models_show_whether_each_version_is_loaded_and_why_not() -> None:
    info = models_pb2.ModelVersionInfo(name="m", version="1", loaded=False, load_error="bad weights")
    body = ModelInfo.from_proto(info).model_dump(mode="json")
    assert body["loaded"] is False and body["load_error"] == "bad weights" and body["created_at"] == ""


def test_detect_classes_are_ids_and_names() -> None:
    assert parse_classes(" 0, 2 ,person,, bus ") == ([0, 2], ["person", "bus"])
    with pytest.raises(ApiError, match="out of range"):
        parse_classes(str(2**31))


def test_upload_limits_come_from_the_shared_variables_and_the_old_gateway_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VISION_MAX_UPLOAD_FILES", "12")
    monkeypatch.setenv("VISION_GATEWAY_TRAIN_MAX_BYTES", "3456")
    settings = GatewaySettings()
    assert (settings.train_max_files, settings.train_max_bytes) == (12, 3456)
