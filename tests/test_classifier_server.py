"""classifier_svc as a real gRPC server on loopback: stubs, reflection, health, hot reload, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from tests.conftest import publish_random_model, start_classifier
from vision.image.decode import decode_image
from vision.image.preprocess import Preprocessing
from vision.models.store import ModelStore
from vision.models.weights import load_classifier
from vision.rpc.server import GrpcServer
from vision.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, models_pb2, models_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def direct_top5(
    store: ModelStore, name: str, image: bytes, version: str = ""
) -> tuple[list[int], torch.Tensor]:
    """What the stored model says when called directly, bypassing the service."""
    model = load_classifier(store.get(name, version))
    with torch.inference_mode():
        probs = torch.softmax(model(Preprocessing()(decode_image(image)).unsqueeze(0)), 1)[0]
    scores, ids = torch.topk(probs, 5)
    return ids.tolist(), scores


def classify(channel: grpc.Channel, image: bytes, **model: str) -> classifier_pb2.ClassifyResponse:
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    request = classifier_pb2.ClassifyRequest(image=image, model=common_pb2.ModelRef(**model))
    response: classifier_pb2.ClassifyResponse = stub.Classify(request, timeout=30)
    return response


def test_an_internal_client_classifies_through_the_generated_stubs(
    channel: grpc.Channel, classifier: tuple[GrpcServer, ModelStore], bus_jpeg: bytes
) -> None:
    response = classify(channel, bus_jpeg)
    ids, scores = direct_top5(classifier[1], "resnet18", bus_jpeg)
    assert [c.class_id for c in response.classes] == ids
    assert [c.label for c in response.classes] == [f"class_{i}" for i in ids]
    assert torch.allclose(torch.tensor([c.score for c in response.classes]), scores, atol=1e-5)
    assert (response.model.name, response.model.version) == ("resnet18", "1")
    assert response.timing.total_ms > 0 and response.timing.batch_size >= 1


def test_a_generic_client_discovers_and_calls_the_classifier_through_reflection(
    channel: grpc.Channel, bus_jpeg: bytes
) -> None:
    # No generated code: everything below comes from the server's reflection service.
    database = ProtoReflectionDescriptorDatabase(channel)
    assert "vision.v1.Classifier" in database.get_services()
    assert "grpc.health.v1.Health" in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("vision.v1.Classifier").FindMethodByName("Classify")
    request_cls = GetMessageClass(method.input_type)
    response_cls = GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/vision.v1.Classifier/Classify",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    response = call(request_cls(image=bus_jpeg, top_k=3), timeout=30)
    assert len(response.classes) == 3
    assert response.classes[0].score >= response.classes[1].score >= response.classes[2].score


def test_health_is_not_serving_until_ready_and_serving_after(store: ModelStore) -> None:
    from vision.rpc.server import create_server

    server = create_server("127.0.0.1:0", lambda _s: ("vision.v1.Classifier",), max_message_bytes=1 << 20)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "vision.v1.Classifier"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == NOT_SERVING
        server.set_serving()
        assert (
            stub.Check(health_pb2.HealthCheckRequest(service="vision.v1.Classifier"), timeout=5).status
            == SERVING
        )
        server.health.enter_graceful_shutdown()
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
    server.server.stop(0)


def test_a_new_version_is_served_within_seconds_and_no_request_fails_during_the_swap(
    channel: grpc.Channel, classifier: tuple[GrpcServer, ModelStore], bus_jpeg: bytes
) -> None:
    store = classifier[1]
    stop = threading.Event()
    failures: list[Exception] = []
    versions_seen: set[str] = set()

    def hammer() -> None:
        while not stop.is_set():
            try:
                versions_seen.add(classify(channel, bus_jpeg).model.version)
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    publish_random_model(store, seed=1)  # version 2, written by "another process" through the store
    deadline = time.monotonic() + 15
    while "2" not in versions_seen and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert "2" in versions_seen
    ids, _ = direct_top5(store, "resnet18", bus_jpeg, "2")
    assert [c.class_id for c in classify(channel, bus_jpeg).classes] == ids
    # The old version stays reachable by number.
    assert classify(channel, bus_jpeg, name="resnet18", version="1").model.version == "1"


def test_a_model_imported_while_running_is_served_by_name(
    channel: grpc.Channel, classifier: tuple[GrpcServer, ModelStore], bus_jpeg: bytes
) -> None:
    publish_random_model(classifier[1], "pets", arch="smallcnn", classes=["cat", "dog"])
    response = classify(channel, bus_jpeg, name="pets")
    assert response.model.name == "pets" and {c.label for c in response.classes} == {"cat", "dog"}
    catalog = models_pb2_grpc.ModelCatalogStub(channel)
    listed = catalog.ListModels(models_pb2.ListModelsRequest(), timeout=10)
    assert {(m.name, m.version, m.loaded) for m in listed.models} == {
        ("resnet18", "1", True),
        ("pets", "1", True),
    }
    assert listed.default_model == "resnet18"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    channel: grpc.Channel,
    classifier: tuple[GrpcServer, ModelStore],
    bus_jpeg: bytes,
    zidane_jpeg: bytes,
    astronaut: Image.Image,
) -> None:
    from tests.conftest import encode

    images = [bus_jpeg, zidane_jpeg, encode(astronaut, "PNG")] * 6
    expected = {img: direct_top5(classifier[1], "resnet18", img)[0] for img in set(images)}
    with ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(lambda img: classify(channel, img), images))
    for image, response in zip(images, responses, strict=True):
        assert [c.class_id for c in response.classes] == expected[image]
    assert max(r.timing.batch_size for r in responses) > 1


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"image": b""}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ({"image": b"not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        ({"top_k": 101}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ({"top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ({"model": common_pb2.ModelRef(name="nope")}, grpc.StatusCode.NOT_FOUND, "available: resnet18"),
        (
            {"model": common_pb2.ModelRef(name="resnet18", version="9")},
            grpc.StatusCode.NOT_FOUND,
            "versions: 1",
        ),
    ],
)
def test_bad_requests_get_a_status_code_and_a_message(
    channel: grpc.Channel,
    bus_jpeg: bytes,
    request_fields: dict[str, object],
    code: grpc.StatusCode,
    message: str,
) -> None:
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(classifier_pb2.ClassifyRequest(**{"image": bus_jpeg, **request_fields}), timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()
    assert classify(channel, bus_jpeg).classes  # still up


def test_an_empty_store_answers_no_model_and_the_service_stays_up(store: ModelStore, bus_jpeg: bytes) -> None:
    server, engine = start_classifier(store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == SERVING
            with pytest.raises(grpc.RpcError) as info:
                classify(ch, bus_jpeg)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "import one" in info.value.details()
            publish_random_model(store)
            assert classify(ch, bus_jpeg).model.name == "resnet18"
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def test_sigterm_turns_health_not_serving_and_lets_in_flight_calls_finish(
    tmp_path: Path, bus_jpeg: bytes
) -> None:
    store = ModelStore(tmp_path / "models")
    publish_random_model(store, arch="smallcnn")
    env = {
        **os.environ,
        "VISION_MODEL_DIR": str(store.root),
        "VISION_CLASSIFIER_PORT": "0",
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
        # A request waits 0.9 s for companions: long enough to be in flight when SIGTERM arrives.
        "VISION_CLASSIFIER_MAX_BATCH_SIZE": "64",
        "VISION_CLASSIFIER_MAX_BATCH_DELAY_MS": "900",
        "VISION_CLASSIFIER_SHUTDOWN_DELAY_SECONDS": "1",
    }
    # Port 0 picks a free port; learn it from the log line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "classifier_svc"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1].split()[0])
            if "SERVING" in line:
                break
        assert port, "the service did not log its port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            in_flight = stub.Classify.future(classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30)
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == NOT_SERVING
            assert in_flight.result().classes, "the in-flight call was cut off"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
