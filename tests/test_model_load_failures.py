"""A stored version that cannot be loaded is reported per model, never takes the service down, and is not
retried on every request; health says SERVING because the server can answer."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import publish_random_model, start_classifier
from vision.models.store import ModelStore, ModelVersion
from vision.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2, models_pb2, models_pb2_grpc


def damage(version: ModelVersion) -> None:
    """Flip bytes in the weights: the sha256 in metadata.json no longer matches."""
    data = bytearray(version.weights_path.read_bytes())
    data[-16:] = bytes(16)
    version.weights_path.write_bytes(bytes(data))


@pytest.fixture
def damaged_store(store: ModelStore) -> ModelStore:
    publish_random_model(store, "good", arch="smallcnn", classes=["a", "b"])
    damage(publish_random_model(store, "broken", arch="smallcnn", classes=["x", "y"]))
    return store


def test_a_damaged_version_is_listed_with_why_and_the_service_serves_the_rest(
    damaged_store: ModelStore, bus_jpeg: bytes
) -> None:
    server, engine = start_classifier(damaged_store, default_model="good")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING

            listed = models_pb2_grpc.ModelCatalogStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=5
            )
            by_name = {m.name: m for m in listed.models}
            assert by_name["good"].loaded and by_name["good"].load_error == ""
            assert not by_name["broken"].loaded
            assert "could not be loaded" in by_name["broken"].load_error
            assert "sha256" in by_name["broken"].load_error

            stub = classifier_pb2_grpc.ClassifierStub(channel)
            good = stub.Classify(classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30)
            assert good.model.name == "good" and {c.label for c in good.classes} == {"a", "b"}

            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(
                    classifier_pb2.ClassifyRequest(image=bus_jpeg, model=common_pb2.ModelRef(name="broken")),
                    timeout=30,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "broken" in refused.value.details() and "sha256" in refused.value.details()
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]


def test_a_failed_version_is_not_reloaded_per_request_and_a_fixed_version_serves(
    damaged_store: ModelStore, bus_jpeg: bytes
) -> None:
    server, engine = start_classifier(damaged_store, default_model="good")
    registry = engine.registry  # type: ignore[attr-defined]
    calls: list[str] = []
    load = registry._loader
    registry._loader = lambda version: calls.append(version.version) or load(version)  # count real loads
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            request = classifier_pb2.ClassifyRequest(image=bus_jpeg, model=common_pb2.ModelRef(name="broken"))
            for _ in range(3):
                with pytest.raises(grpc.RpcError):
                    stub.Classify(request, timeout=30)
            assert calls == []  # the recorded failure answers; the damaged file is not read again

            publish_random_model(damaged_store, "broken", arch="smallcnn", classes=["x", "y"], seed=1)
            fixed = stub.Classify(request, timeout=30)
            assert fixed.model == common_pb2.ModelRef(name="broken", version="2")
            assert calls == ["2"]
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]
