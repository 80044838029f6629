"""Observability of the whole system, as an operator sees it: `vision run` (the launcher and the five
processes) exporting traces to an OTLP receiver in the test and serving metrics on their own ports.

For /predict, /explain, /detect and /train the test finds one trace holding the gateway's server span, its
gRPC client span, the service's server span as that client span's child, and the service's stage spans
(decode, queue, inference with the batch size, encode; upload and submit job for the trainer) inside it.
Then it scrapes every metrics port and checks the counts against the traffic it sent, and finds the
request's JSON log line carrying its request id and trace id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from detector_svc.checkpoints import import_yolo_checkpoint
from tests.conftest import publish_random_model
from tests.reliability.mesh import VisionRun, free_port, wait_until
from tests.support.detector import make_yolo_checkpoint
from tests.support.digits import digit_images
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.prometheus import Samples, scrape
from tests.support.prometheus import value as sample
from vision.models.store import ModelStore

SERVER, CLIENT = 2, 3  # OTLP span kinds
SERVICES = ("gateway", "classifier", "explain", "detector", "trainer")
PREDICTS = 3


@dataclass
class System:
    run: VisionRun
    receiver: OtlpReceiver
    metrics_ports: dict[str, int]
    client: httpx.Client

    def scrape(self, service: str) -> Samples:
        return scrape(self.metrics_ports[service])


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("observed")
    store = ModelStore(root / "models")
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=["cat", "dog"])
    import_yolo_checkpoint(store, make_yolo_checkpoint(root / "yolo11n.pt"), "yolo11n")
    ports = {service: free_port() for service in SERVICES}
    with otlp_receiver() as receiver:
        env = {f"VISION_{s.upper()}_METRICS_PORT": str(port) for s, port in ports.items()}
        run = VisionRun(
            root,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="200",  # export every 0.2 s, not every 5 s
            VISION_LOG_JSON="true",
            VISION_CLASSIFIER_DEFAULT_MODEL="smallcnn",
            **env,
        )
        with run:
            run.wait_healthy(timeout_s=240)
            with httpx.Client(base_url=run.url, timeout=60) as client:
                yield System(run, receiver, ports, client)


def server_span(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan | None:
    for span in spans:
        gateway_server = span.service == "vision-gateway" and span.kind == SERVER
        if gateway_server and span.attributes.get("vision.request_id") == request_id:
            return span
    return None


def assert_one_trace(
    system: System, request_id: str, service: str, method: str, stages: tuple[str, ...]
) -> list[ReceivedSpan]:
    """The request's trace: gateway server span → gateway client span → service server span → stages."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        root = server_span(spans, request_id)
        if root is None:
            return False
        names = {(s.service, s.name) for s in spans if s.trace_id == root.trace_id}
        return {(service, method), *((service, stage) for stage in stages)} <= names

    spans = system.receiver.wait_for(complete)
    root = server_span(spans, request_id)
    assert root is not None and root.parent_id == ""
    trace = [s for s in spans if s.trace_id == root.trace_id]
    calls = [s for s in trace if s.service == "vision-gateway" and s.kind == CLIENT and s.name == method]
    assert len(calls) == 1, [(s.service, s.name) for s in trace]
    call = calls[0]
    assert call.parent_id == root.span_id and root.contains(call)
    served = [s for s in trace if s.service == service and s.kind == SERVER]
    assert len(served) == 1 and served[0].name == method
    handler = served[0]
    assert handler.parent_id == call.span_id  # the traceparent crossed the gRPC call
    for stage in stages:
        (child,) = [s for s in trace if s.service == service and s.name == stage]
        assert child.parent_id == handler.span_id, stage
        assert handler.contains(child), (stage, child, handler)
    return trace


def test_predict_explain_and_detect_are_each_one_trace_across_gateway_and_service(
    system: System, bus_jpeg: bytes
) -> None:
    files = {"file": ("bus.jpg", bus_jpeg, "image/jpeg")}
    for i in range(PREDICTS):
        reply = system.client.post("/predict", files=files, headers={"X-Request-ID": f"obs-predict-{i}"})
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Request-ID"] == f"obs-predict-{i}"
    bad = system.client.post("/predict", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 400 and bad.json()["error"]["request_id"] == bad.headers["X-Request-ID"]
    explained = system.client.post("/explain", files=files, headers={"X-Request-ID": "obs-explain"})
    assert explained.status_code == 200, explained.text
    detected = system.client.post("/detect", files=files, headers={"X-Request-ID": "obs-detect"})
    assert detected.status_code == 200, detected.text

    stages = ("decode", "queue", "inference", "encode")
    trace = assert_one_trace(
        system, "obs-predict-0", "vision-classifier", "/vision.v1.Classifier/Classify", stages
    )
    (inference,) = [s for s in trace if s.name == "inference"]
    assert inference.attributes["batch_size"] >= 1 and inference.attributes["model"] == "smallcnn"
    assert_one_trace(system, "obs-explain", "vision-explain", "/vision.v1.Explainer/Explain", stages)
    assert_one_trace(system, "obs-detect", "vision-detector", "/vision.v1.Detector/Detect", stages)

    # The request's log lines carry its request id and its trace id (uvicorn's access line, here).
    root = server_span(system.receiver.spans(), "obs-predict-0")
    assert root is not None
    lines = [json.loads(line) for line in system.run.lines if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "obs-predict-0"]
    assert mine and all(line.get("trace_id") == root.trace_id for line in mine), mine

    classifier = system.scrape("classifier")
    grpc_labels = {"grpc_service": "vision.v1.Classifier", "grpc_method": "Classify", "grpc_type": "unary"}
    assert sample(classifier, "grpc_server_handled_total", grpc_code="OK", **grpc_labels) == PREDICTS
    assert sample(classifier, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **grpc_labels) == 1
    assert sample(classifier, "grpc_server_started_total", **grpc_labels) == PREDICTS + 1
    assert sample(classifier, "grpc_server_handling_seconds_count", **grpc_labels) == PREDICTS + 1
    assert 0 < sample(classifier, "grpc_server_handling_seconds_sum", **grpc_labels) < 60
    # Every answered request was in exactly one batch: the batch sizes add up to the requests.
    assert sample(classifier, "vision_batch_size_sum", model="smallcnn") == PREDICTS
    assert (
        1 <= sample(classifier, "vision_inference_seconds_count", model="smallcnn", version="1") <= PREDICTS
    )
    assert sample(classifier, "vision_queue_wait_seconds_count", model="smallcnn") == PREDICTS
    assert sample(classifier, "vision_decode_seconds_count") == PREDICTS
    assert sample(classifier, "vision_queue_depth") == 0
    assert sample(classifier, "vision_models_loaded", model="smallcnn", version="1") == 1
    assert sample(classifier, "vision_model_load_failures_total") == 0
    assert not [name for name, _ in classifier if name.startswith("vision_gpu_")]  # CPU: no GPU metrics

    explain = system.scrape("explain")
    assert sample(explain, "grpc_server_handled_total", grpc_method="Explain", grpc_code="OK") == 1
    assert sample(explain, "vision_batch_size_sum") == 1
    detector = system.scrape("detector")
    assert sample(detector, "grpc_server_handled_total", grpc_method="Detect", grpc_code="OK") == 1
    assert sample(detector, "vision_models_loaded", model="yolo11n") == 1

    gateway = system.scrape("gateway")
    route = {"route": "/predict", "method": "POST"}
    assert sample(gateway, "vision_gateway_requests_total", status="200", **route) == PREDICTS
    assert sample(gateway, "vision_gateway_requests_total", status="400", **route) == 1
    assert (
        sample(gateway, "vision_gateway_upstream_errors_total", service="classifier", code="INVALID_ARGUMENT")
        == 1
    )
    assert sample(gateway, "vision_gateway_request_seconds_count", route="/detect") == 1
    assert httpx.get(f"{system.run.url}/metrics").status_code == 404  # not on the public port


def test_a_training_upload_is_one_trace_and_the_trainer_counts_the_job(system: System) -> None:
    images = [(name, png) for name, png in digit_images(size=32, per_class=12) if name in ("0", "1")]
    files = [
        (f"files{int(name) + 1}", (f"{name}-{i}.png", png, "image/png"))
        for i, (name, png) in enumerate(images)
    ]
    form = {
        "label1": "zero",
        "label2": "one",
        "model_name": "observed",
        "arch": "smallcnn",
        "pretrained": "false",
        "epochs": "2",
        "img_size": "32",
    }
    reply = system.client.post("/train", data=form, files=files, headers={"X-Request-ID": "obs-train"})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert_one_trace(
        system, "obs-train", "vision-trainer", "/vision.v1.Trainer/CreateJob", ("upload", "submit job")
    )
    (upload,) = [s for s in system.receiver.spans() if s.service == "vision-trainer" and s.name == "upload"]
    assert upload.attributes["upload.images"] == len(images)

    def succeeded() -> bool:
        return system.client.get(f"/jobs/{job_id}").json().get("status") == "succeeded"

    assert wait_until(succeeded, 180, 0.5), system.client.get(f"/jobs/{job_id}").text
    trainer = system.scrape("trainer")
    create = {"grpc_method": "CreateJob", "grpc_type": "client_stream"}
    assert sample(trainer, "grpc_server_handled_total", grpc_code="OK", **create) == 1
    assert sample(trainer, "vision_trainer_jobs", state="succeeded") == 1
    assert sample(trainer, "vision_trainer_jobs", state="running") == 0
    assert sample(trainer, "vision_trainer_jobs_finished_total", state="succeeded") == 1
    assert sample(trainer, "vision_trainer_jobs_finished_total", state="failed") == 0
    assert sample(trainer, "vision_trainer_epoch_seconds_count") == 2
    assert sample(trainer, "vision_trainer_images_per_second_count") == 2
    assert sample(trainer, "vision_trainer_upload_bytes_total") == sum(len(png) for _, png in images)
