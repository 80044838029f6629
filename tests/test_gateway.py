"""The HTTP gateway in front of a real classifier: the /predict contract, scores equal to the stored model's,
gRPC failures as HTTP statuses, health, docs, CORS and the model list."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import encode, live_gateway, publish_random_model, start_classifier
from vision.image.decode import decode_image
from vision.image.preprocess import Preprocessing
from vision.models.store import ModelStore
from vision.models.weights import load_classifier
from vision.serving.classifier import LoadedClassifier

RESNET_CLASSES = [f"class_{i}" for i in range(10)]  # publish_random_model's default
SMALLCNN_CLASSES = ["cat", "dog", "bird"]
CLASS_NAMES = {"resnet18": RESNET_CLASSES, "smallcnn": SMALLCNN_CLASSES}

Probabilities = Callable[[bytes, str, str], torch.Tensor]


@contextmanager
def gateway_client(**settings: object) -> Iterator[httpx.Client]:
    with live_gateway(**settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """resnet18 versions 1 and 2 (2 is the newest, so the default) and a 3-class smallcnn."""
    store = ModelStore(tmp_path_factory.mktemp("gateway") / "models")
    publish_random_model(store, seed=0)
    publish_random_model(store, seed=1)
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=SMALLCNN_CLASSES, seed=2)
    return store


@pytest.fixture(scope="module")
def classifier_addr(served_store: ModelStore) -> Iterator[str]:
    server, engine = start_classifier(served_store)
    yield f"127.0.0.1:{server.port}"
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def api(classifier_addr: str) -> Iterator[httpx.Client]:
    with gateway_client(classifier_addr=classifier_addr, timeout_s=30) as client:
        yield client


@pytest.fixture(scope="module")
def stored_probabilities(served_store: ModelStore) -> Probabilities:
    """Softmax scores of a stored version for an image, computed directly: no service in between."""
    models: dict[tuple[str, str], torch.nn.Module] = {}

    def probabilities(data: bytes, name: str, version: str) -> torch.Tensor:
        stored = served_store.get(name, version)
        if stored.key not in models:
            models[stored.key] = load_classifier(stored)
        meta = stored.metadata
        prep = Preprocessing(meta.resize_size, meta.input_size, tuple(meta.mean), tuple(meta.std))
        with torch.inference_mode():
            logits = models[stored.key](prep(decode_image(data)).unsqueeze(0))
        return torch.softmax(logits, dim=1)[0]

    return probabilities


@pytest.fixture(scope="module")
def small_jpeg(astronaut: Image.Image) -> bytes:
    return encode(astronaut.resize((96, 96)), "JPEG", quality=90)


@pytest.fixture(params=["bus.jpg", "zidane.jpg", "astronaut.png", "astronaut.webp", "astronaut.bmp"])
def photo(
    request: pytest.FixtureRequest, bus_jpeg: bytes, zidane_jpeg: bytes, astronaut: Image.Image
) -> bytes:
    """Real photos: the two ultralytics JPEGs and scikit-image's astronaut in the other accepted formats."""
    stem, ext = request.param.split(".")
    if stem == "astronaut":
        return encode(astronaut, {"png": "PNG", "webp": "WEBP", "bmp": "BMP"}[ext])
    return bus_jpeg if stem == "bus" else zidane_jpeg


def upload(data: bytes, name: str = "photo.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "application/octet-stream")}


def assert_scores_of(body: dict[str, Any], probabilities: torch.Tensor, class_names: list[str]) -> None:
    """``body`` is a /predict answer whose top classes and scores are those of ``probabilities``."""
    top = body["top5"]
    expected = torch.topk(probabilities, len(top))
    assert [entry["class_id"] for entry in top] == expected.indices.tolist()
    assert [entry["confidence"] for entry in top] == pytest.approx(expected.values.tolist(), abs=1e-5)
    for rank, entry in enumerate(top, start=1):
        assert {"rank", "class", "confidence"} <= set(entry)
        assert entry["rank"] == rank
        assert entry["class"] == class_names[entry["class_id"]]
    best = body["prediction"]
    assert set(best) == {"class", "class_id", "confidence", "confidence_percent"}
    assert (best["class"], best["class_id"], best["confidence"]) == (
        top[0]["class"],
        top[0]["class_id"],
        top[0]["confidence"],
    )
    assert best["confidence_percent"] == round(best["confidence"] * 100, 2)


# -- POST /predict ------------------------------------------------------------------------------------------


def test_predict_answers_the_documented_shape_with_the_stored_models_scores(
    api: httpx.Client, photo: bytes, stored_probabilities: Probabilities
) -> None:
    response = api.post("/predict", files=upload(photo))
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"success", "prediction", "top5", "model"} <= set(body)
    assert body["success"] is True
    assert body["model"] == {"name": "resnet18", "version": "2"}
    assert len(body["top5"]) == 5
    assert_scores_of(body, stored_probabilities(photo, "resnet18", "2"), RESNET_CLASSES)


@pytest.mark.parametrize(
    ("form", "served", "class_names"),
    [
        pytest.param({}, ("resnet18", "2"), RESNET_CLASSES, id="default-model-newest-version"),
        pytest.param(
            {"model": "resnet18"}, ("resnet18", "2"), RESNET_CLASSES, id="named-model-newest-version"
        ),
        pytest.param(
            {"model": "resnet18", "version": "1"}, ("resnet18", "1"), RESNET_CLASSES, id="older-version"
        ),
        pytest.param({"model": "smallcnn"}, ("smallcnn", "1"), SMALLCNN_CLASSES, id="other-model"),
    ],
)
def test_predict_uses_the_requested_model_and_version(
    api: httpx.Client,
    bus_jpeg: bytes,
    stored_probabilities: Probabilities,
    form: dict[str, str],
    served: tuple[str, str],
    class_names: list[str],
) -> None:
    response = api.post("/predict", data=form, files=upload(bus_jpeg))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": served[0], "version": served[1]}
    assert_scores_of(body, stored_probabilities(bus_jpeg, *served), class_names)


@pytest.mark.parametrize(
    ("model", "top_k"),
    [("resnet18", 1), ("resnet18", 10), ("resnet18", 100), ("smallcnn", 5)],
)
def test_top_k_sets_how_many_classes_come_back_clamped_to_the_class_count(
    api: httpx.Client, small_jpeg: bytes, model: str, top_k: int
) -> None:
    response = api.post("/predict", data={"model": model, "top_k": str(top_k)}, files=upload(small_jpeg))
    assert response.status_code == 200, response.text
    top = response.json()["top5"]
    num_classes = len(CLASS_NAMES[model])
    assert [entry["rank"] for entry in top] == list(range(1, min(top_k, num_classes) + 1))
    scores = [entry["confidence"] for entry in top]
    assert scores == sorted(scores, reverse=True)
    if top_k >= num_classes:  # every class once: the probabilities add up to one
        assert len({entry["class_id"] for entry in top}) == num_classes
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)


# -- gRPC status -> HTTP status -----------------------------------------------------------------------------


class HeldModel(LoadedClassifier):
    """A served model whose forward pass waits until the test releases it: while one batch is held on the
    batcher's thread, the queue fills deterministically."""

    def __init__(self, model: LoadedClassifier) -> None:
        super().__init__(model.version, model.module, model.preprocessing, model.device, model.dtype)
        self.running, self.release = threading.Event(), threading.Event()

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.running.set()
        assert self.release.wait(30), "the test never released the held batch"
        return super().predict(batch)


def test_overloaded_classifier_answers_429_with_retry_after_and_serves_again_once_drained(
    served_store: ModelStore, small_jpeg: bytes
) -> None:
    server, engine = start_classifier(served_store, max_queue=1, max_batch_size=1)
    _, _, model = engine.registry.get("resnet18", "")  # type: ignore[attr-defined]
    held = HeldModel(model)
    tensor = model.preprocessing(decode_image(small_jpeg))
    try:
        with gateway_client(classifier_addr=f"127.0.0.1:{server.port}", retry_after_s=3) as client:
            running = engine.batcher.submit(held, tensor)  # type: ignore[attr-defined]
            assert held.running.wait(10)  # the batcher's one thread is busy with it
            waiting = engine.batcher.submit(held, tensor)  # type: ignore[attr-defined]  # the queue of 1 is full
            overloaded = client.post("/predict", files=upload(small_jpeg))
            held.release.set()
            running.result(10), waiting.result(10)
            after = client.post("/predict", files=upload(small_jpeg))
    finally:
        held.release.set()
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]
    assert overloaded.status_code == 429, overloaded.text
    assert overloaded.headers["retry-after"] == "3"
    assert overloaded.json()["success"] is False
    assert overloaded.json()["error"]["code"] == "resource_exhausted"
    assert "queue is full" in overloaded.json()["error"]["message"]
    assert after.status_code == 200, after.text


def test_unreachable_classifier_answers_503_while_liveness_stays_ok() -> None:
    with gateway_client(classifier_addr=f"127.0.0.1:{closed_port()}", health_timeout_s=2) as client:
        predict = client.post("/predict", files=upload(b"\xff\xd8\xff"))
        models = client.get("/models")
        health = client.get("/health")
        healthz = client.get("/healthz")
    for response in (predict, models):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == {
            "code": "unavailable",
            "message": "the classifier service is unavailable; try again shortly",
            "request_id": response.headers["X-Request-ID"],
        }
    assert health.status_code == 503
    assert health.json() == {"status": "degraded", "services": {"classifier": "UNAVAILABLE"}}
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}


def test_classifier_missing_the_deadline_answers_504_and_serves_the_next_request(
    api: httpx.Client, classifier_addr: str, small_jpeg: bytes
) -> None:
    with gateway_client(classifier_addr=classifier_addr, timeout_s=0.001) as hurried:
        response = hurried.post("/predict", files=upload(small_jpeg))
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert "did not answer in time" in response.json()["error"]["message"]
    assert api.post("/predict", files=upload(small_jpeg)).status_code == 200


# -- health, docs, CORS, models -----------------------------------------------------------------------------


def test_health_reports_every_service_serving(api: httpx.Client) -> None:
    health = api.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "services": {"classifier": "SERVING"}}
    healthz = api.get("/healthz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}


def test_health_turns_degraded_when_the_classifier_stops(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = ModelStore(tmp_path_factory.mktemp("stopping") / "models")
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=SMALLCNN_CLASSES)
    server, engine = start_classifier(store)
    try:
        with gateway_client(classifier_addr=f"127.0.0.1:{server.port}", health_timeout_s=2) as client:
            before = client.get("/health")
            server.stop(0).wait()
            after = client.get("/health")
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]
    assert before.status_code == 200 and before.json()["services"] == {"classifier": "SERVING"}
    assert after.status_code == 503
    assert after.json()["status"] == "degraded"
    assert after.json()["services"]["classifier"] in ("UNAVAILABLE", "NOT_SERVING")


def test_interactive_docs_and_openapi_schema_describe_predict(api: httpx.Client) -> None:
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    page = api.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text  # the web client
    schema = api.get("/openapi.json").json()
    assert {"/predict", "/health", "/healthz", "/models"} <= set(schema["paths"])
    form_ref = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][form_ref["$ref"].rsplit("/", 1)[-1]]
    assert set(form["properties"]) == {"file", "model", "version", "top_k"}
    assert form["required"] == ["file"]


@pytest.mark.parametrize(
    ("cors_origins", "origin", "allowed"),
    [
        pytest.param([], "http://example.com", False, id="off-by-default"),
        pytest.param(["http://example.com"], "http://example.com", True, id="configured-origin"),
        pytest.param(["http://example.com"], "http://elsewhere.example", False, id="other-origin"),
    ],
)
def test_cors_headers_are_sent_only_to_configured_origins(
    classifier_addr: str, cors_origins: list[str], origin: str, allowed: bool
) -> None:
    with gateway_client(classifier_addr=classifier_addr, cors_origins=cors_origins) as client:
        simple = client.get("/healthz", headers={"Origin": origin})
        preflight = client.options(
            "/predict", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
    expected = origin if allowed else None
    assert simple.headers.get("access-control-allow-origin") == expected
    assert preflight.headers.get("access-control-allow-origin") == expected
    if allowed:
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["access-control-allow-methods"]


def test_models_lists_the_stored_models_and_marks_the_served_ones_loaded(api: httpx.Client) -> None:
    response = api.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["default_model"] == "resnet18"
    listed = {(m["name"], m["version"]): m for m in body["models"]}
    assert {("resnet18", "1"), ("resnet18", "2"), ("smallcnn", "1")} <= set(listed)
    newest = listed[("resnet18", "2")]
    assert newest["loaded"] is True
    assert newest["architecture"] == "resnet18" and newest["task"] == "classification"
    assert newest["num_classes"] == 10 and newest["class_names"] == RESNET_CLASSES
    assert newest["source"] and newest["created_at"].endswith("Z")
    assert listed[("smallcnn", "1")]["loaded"] is True
    assert listed[("smallcnn", "1")]["class_names"] == SMALLCNN_CLASSES
