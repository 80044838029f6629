"""ClassifierServicer without a network (grpc_testing): validation and status codes."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import grpc_testing
import pytest

from classifier_svc.model import ClassifierEngine
from classifier_svc.servicer import ClassifierServicer
from tests.conftest import publish_random_model
from vision.models.store import ModelStore
from vision.v1 import classifier_pb2, common_pb2

CLASSIFY = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].methods_by_name["Classify"]


@pytest.fixture
def engine(store: ModelStore) -> Iterator[ClassifierEngine]:
    publish_random_model(store, "pets", arch="smallcnn", classes=["cat", "dog", "bird"])
    engine = ClassifierEngine(store, device="cpu", max_batch_delay_ms=0)
    engine.start()
    yield engine
    engine.close()


def invoke(
    engine: ClassifierEngine, request: classifier_pb2.ClassifyRequest
) -> tuple[object, grpc.StatusCode, str]:
    server = grpc_testing.server_from_dictionary(
        {classifier_pb2.DESCRIPTOR.services_by_name["Classifier"]: ClassifierServicer(engine)},
        grpc_testing.strict_real_time(),
    )
    rpc = server.invoke_unary_unary(CLASSIFY, (), request, timeout=30)
    response, _, code, details = rpc.termination()
    return response, code, details


def test_top_k_defaults_to_five_and_is_clamped_to_the_class_count(
    engine: ClassifierEngine, bus_jpeg: bytes
) -> None:
    response, code, _ = invoke(engine, classifier_pb2.ClassifyRequest(image=bus_jpeg))
    assert code == grpc.StatusCode.OK
    assert isinstance(response, classifier_pb2.ClassifyResponse)
    assert sorted(c.label for c in response.classes) == ["bird", "cat", "dog"]
    assert abs(sum(c.score for c in response.classes) - 1) < 1e-5
    assert response.model == common_pb2.ModelRef(name="pets", version="1")


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"top_k": 500}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"image": b"\x89PNG\r\n\x1a\n broken"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": common_pb2.ModelRef(name="resnet18")}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_errors_map_to_status_codes(
    engine: ClassifierEngine, bus_jpeg: bytes, request_fields: dict[str, object], code: grpc.StatusCode
) -> None:
    _, actual, details = invoke(
        engine, classifier_pb2.ClassifyRequest(**{"image": bus_jpeg, **request_fields})
    )
    assert actual == code
    assert details and "Traceback" not in details
