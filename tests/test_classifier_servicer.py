"""ClassifierServicer without a network (grpc_testing): validation and the domain errors it raises.

Turning those errors into status codes is the interceptor's job (tests/test_status_mapping.py), checked end to
end on a real server in tests/test_classifier_server.py; grpc_testing runs servicers without interceptors."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import grpc_testing
import pytest

from classifier_svc.config import ClassifierSettings
from classifier_svc.model import ClassifierEngine
from classifier_svc.servicer import ClassifierServicer
from tests.conftest import publish_random_model
from vision import errors
from vision.models.store import ModelStore
from vision.rpc.status import status_of
from vision.v1 import classifier_pb2, common_pb2

CLASSIFY = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].methods_by_name["Classify"]


@pytest.fixture
def engine(store: ModelStore) -> Iterator[ClassifierEngine]:
    publish_random_model(store, "pets", arch="smallcnn", classes=["cat", "dog", "bird"])
    engine = ClassifierEngine(store, ClassifierSettings(device="cpu", max_batch_delay_ms=0))
    engine.start()
    yield engine
    engine.close()


RAISED: list[errors.VisionError] = []


class RecordingServicer(ClassifierServicer):
    """The real servicer; keeps what it raised so a test can check the domain error, not only its text."""

    def Classify(self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        try:
            return super().Classify(request, context)
        except errors.VisionError as exc:
            RAISED.append(exc)
            raise


def invoke(
    engine: ClassifierEngine, request: classifier_pb2.ClassifyRequest
) -> tuple[object, grpc.StatusCode, str]:
    server = grpc_testing.server_from_dictionary(
        {classifier_pb2.DESCRIPTOR.services_by_name["Classifier"]: RecordingServicer(engine)},
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
    ("request_fields", "error", "code"),
    [
        ({"top_k": 500}, errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        ({"image": b"\x89PNG\r\n\x1a\n broken"}, errors.InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
        ({"model": common_pb2.ModelRef(name="resnet18")}, errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_bad_requests_raise_a_domain_error_with_the_intended_status(
    engine: ClassifierEngine,
    bus_jpeg: bytes,
    request_fields: dict[str, object],
    error: type[errors.VisionError],
    code: grpc.StatusCode,
) -> None:
    _, actual, details = invoke(
        engine, classifier_pb2.ClassifyRequest(**{"image": bus_jpeg, **request_fields})
    )
    assert actual == grpc.StatusCode.UNKNOWN  # grpc_testing's code for an exception raised by the servicer
    raised = RAISED[-1]
    assert isinstance(raised, error) and raised.message in details
    assert status_of(raised) == code
