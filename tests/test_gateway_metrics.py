"""The gateway's and a model service's metrics ports, in one process: requests by route template and
status, refusals by the gateway's own access control, upstream errors by service and code, the grpc-prometheus
counters of the service, a damaged model counted as a load failure, and the request id that every answer
carries and every log line of the request names."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, publish_random_model, start_classifier
from tests.reliability.mesh import free_port, wait_until
from tests.support.prometheus import scrape, value
from vision.logs import JsonFormatter
from vision.models.store import ModelStore
from vision.security.keys import create_key
from vision.security.roles import Role
from vision.security.settings import AuthSettings
from vision.telemetry.context import LogContextFilter


@dataclass
class Stack:
    url: str
    gateway_metrics: int
    classifier_metrics: int
    store: ModelStore
    keys: dict[str, str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("metrics")
    store = ModelStore(root / "models")
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=["cat", "dog"])
    keys_file = root / "auth" / "keys.json"
    keys = {
        "viewer": create_key(keys_file, "viewer", Role.VIEWER, None)[1],
        "slow": create_key(keys_file, "slow", Role.VIEWER, {"rate": 0.01, "burst": 1})[1],
    }
    ports = free_port(), free_port()
    classifier, engine = start_classifier(store, metrics_port=ports[1], default_model="smallcnn")
    settings = GatewaySettings(
        classifier_addr=f"127.0.0.1:{classifier.port}",
        detector_addr=f"127.0.0.1:{free_port()}",  # nothing listens: UNAVAILABLE
        metrics_port=ports[0],
    )
    auth = AuthSettings(required=True, keys_file=keys_file)
    with LiveServer(create_app(settings, auth)) as live:
        yield Stack(live.url, ports[0], ports[1], store, keys)
    classifier.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


def test_requests_refusals_and_upstream_errors_are_counted(stack: Stack, bus_jpeg: bytes) -> None:
    viewer = {"X-API-Key": stack.keys["viewer"]}
    photo = {"file": ("a.jpg", bus_jpeg, "image/jpeg")}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for _ in range(2):
            assert client.post("/predict", files=photo, headers=viewer).status_code == 200
        bad = client.post("/predict", files={"file": ("a.jpg", b"", "image/jpeg")}, headers=viewer)
        assert bad.status_code == 400
        assert client.post("/predict", files=photo).status_code == 401  # no key
        assert (
            client.post("/predict", files=photo, headers={"X-API-Key": "vk_" + "x" * 43}).status_code == 401
        )
        assert client.post("/train", headers=viewer).status_code == 403  # a viewer may not train
        slow = {"X-API-Key": stack.keys["slow"]}
        assert client.get("/models", headers=slow).status_code == 200
        assert client.get("/models", headers=slow).status_code == 429
        assert client.post("/detect", files=photo, headers=viewer).status_code == 503
        assert client.get("/no/such/page", headers=viewer).status_code == 404
        assert client.get("/metrics", headers=viewer).status_code == 404  # not on the public port

    gateway = scrape(stack.gateway_metrics)
    predict = {"route": "/predict", "method": "POST"}
    assert value(gateway, "vision_gateway_requests_total", status="200", **predict) == 2
    assert value(gateway, "vision_gateway_requests_total", status="401", **predict) == 2
    assert value(gateway, "vision_gateway_request_seconds_count", route="/predict") == 5
    assert value(gateway, "vision_gateway_auth_rejections_total", reason="unauthenticated") == 2
    assert value(gateway, "vision_gateway_auth_rejections_total", reason="forbidden") == 1
    assert value(gateway, "vision_gateway_rate_limited_total") == 1
    # The unreachable detector was called twice: by POST /detect (503) and by the first GET /models, which
    # asks the detector for its detection models and, failing, answers with the classifier's list alone.
    assert value(gateway, "vision_gateway_upstream_errors_total", service="detector", code="UNAVAILABLE") == 2
    assert value(gateway, "vision_gateway_upstream_errors_total", service="classifier") == 1  # the empty file
    assert value(gateway, "vision_gateway_in_flight_requests") == 0
    assert any(dict(labels).get("route") == "unmatched" for _, labels in gateway)
    assert not any("/no/such/page" in str(labels) for _, labels in gateway)

    service = scrape(stack.classifier_metrics)
    classify = {"grpc_service": "vision.v1.Classifier", "grpc_method": "Classify", "grpc_type": "unary"}
    assert value(service, "grpc_server_handled_total", grpc_code="OK", **classify) == 2
    assert value(service, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **classify) == 1
    assert value(service, "grpc_server_started_total", **classify) == 3
    assert value(service, "vision_batch_size_sum", model="smallcnn") == 2
    assert value(service, "grpc_server_handled_total", grpc_method="ListModels", grpc_code="OK") >= 1


def test_a_damaged_version_counts_as_a_load_failure(stack: Stack, bus_jpeg: bytes) -> None:
    before = value(scrape(stack.classifier_metrics), "vision_model_load_failures_total", model="broken")
    version = publish_random_model(stack.store, name="broken", arch="smallcnn", classes=["a", "b"])
    weights = Path(version.path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: its sha256 no longer matches
    # Found damaged by the store's poll, or at the latest when a request asks for it:
    httpx.post(
        f"{stack.url}/predict",
        files={"file": ("a.jpg", bus_jpeg, "image/jpeg")},
        data={"model": "broken"},
        headers={"X-API-Key": stack.keys["viewer"]},
        timeout=30,
    )

    def counted() -> bool:
        return (
            value(scrape(stack.classifier_metrics), "vision_model_load_failures_total", model="broken")
            > before
        )

    assert wait_until(counted, 20, 0.2)
    assert value(scrape(stack.classifier_metrics), "vision_models_loaded", model="broken") == 0


def test_the_request_id_is_in_the_answer_the_error_body_and_the_log_lines(
    stack: Stack, bus_jpeg: bytes
) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        viewer = {"X-API-Key": stack.keys["viewer"]}
        photo = {"file": ("a.jpg", bus_jpeg, "image/jpeg")}
        mine = httpx.post(f"{stack.url}/detect", files=photo, headers={**viewer, "X-Request-ID": "ticket-42"})
        made = httpx.post(
            f"{stack.url}/detect", files=photo, headers={**viewer, "X-Request-ID": "no spaces!"}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    assert mine.status_code == 503 and mine.headers["X-Request-ID"] == "ticket-42"
    assert mine.json()["error"]["request_id"] == "ticket-42"
    unusable = made.headers["X-Request-ID"]  # a client's id that is not usable is replaced
    assert unusable != "no spaces!" and made.json()["error"]["request_id"] == unusable
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    warnings = [entry for entry in logged if "detector unavailable" in entry["message"]]
    assert [entry.get("request_id") for entry in warnings] == ["ticket-42", unusable]
