"""The Open Inference Protocol (KServe v2) spoken by the real services, checked with Triton's own clients.

classifier_svc and detector_svc serve ``inference.GRPCInferenceService`` on their own gRPC ports; the gateway
serves the REST binding under ``/v2``. Everything here is real: two versions of a seeded ResNet18 and a
YOLO11n built from ultralytics' bundled yaml, published to a store; the services and the gateway (with API
keys required) on loopback; tritonclient's gRPC client (in a process of its own: it registers the same
protobuf package as our services, see tests/support/triton_grpc.py), its HTTP client (in this process), and
its asyncio gRPC client as the load generator of benchmarks/oip.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client import generate_latest
from tritonclient.utils import InferenceServerException

from tests.support.oip import (
    MAX_BATCH,
    REPO_ROOT,
    Stack,
    assert_probabilities_equal,
    b64,
    classifier_plan,
    detect,
    detector_plan,
    predict,
    serving_stack,
    triton_grpc,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, astronaut: Image.Image) -> Iterator[Stack]:
    with serving_stack(tmp_path_factory.mktemp("oip"), astronaut) as running:
        yield running


@pytest.fixture(scope="module")
def grpc_results(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One tritonclient.grpc session against the classifier and one against the detector."""
    plan = classifier_plan(stack.photos, tmp_path_factory.mktemp("tensors"))
    results = {f"c.{k}": v for k, v in triton_grpc(stack.classifier, plan).items()}
    results |= {f"d.{k}": v for k, v in triton_grpc(stack.detector, detector_plan(stack.photos)).items()}
    return results


# -- gRPC ------------------------------------------------------------------------------------------------
def test_health_reflection_and_metrics_include_the_inference_service(stack: Stack) -> None:
    for address in (stack.classifier, stack.detector):
        with grpc.insecure_channel(address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            listed = {s.name for s in answer.list_services_response.service}
            assert "inference.GRPCInferenceService" in listed
    triton_grpc(stack.classifier, {"ready": {"op": "ready"}})
    metrics = generate_latest(stack.engines[0].metrics_registry).decode()
    assert 'grpc_method="ServerReady",grpc_service="inference.GRPCInferenceService"' in metrics


def test_tritonclient_grpc_sees_a_live_ready_server_and_truthful_metadata(
    grpc_results: dict[str, Any],
) -> None:
    r = grpc_results
    assert r["c.live"]["ok"] is True and r["c.ready"]["ok"] is True
    assert (
        r["c.server"]["ok"]["name"] == "vision-classifier"
        and "classification" in r["c.server"]["ok"]["extensions"]
    )
    assert r["c.ready_v2"]["ok"] is True
    assert r["c.ready_v1_before"]["ok"] is False  # stored but not loaded yet: loaded on its first request
    assert r["c.ready_v1_after"]["ok"] is True
    assert r["c.ready_unknown"]["ok"] is False
    metadata = r["c.metadata"]["ok"]
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "vision-torch"
    tensors = lambda items: [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in items]  # noqa: E731
    assert tensors(metadata["inputs"]) == [("IMAGE", "BYTES", [-1]), ("PIXELS", "FP32", [-1, 3, 224, 224])]
    assert tensors(metadata["outputs"]) == [("PROBABILITIES", "FP32", [-1, 10])]
    assert r["c.metadata_unknown"]["error"]["status"] == "StatusCode.NOT_FOUND"
    detector = r["d.metadata"]["ok"]
    assert tensors(detector["inputs"]) == [("IMAGE", "BYTES", [1])]
    assert tensors(detector["outputs"]) == [
        ("BOXES", "FP32", [-1, 4]),
        ("SCORES", "FP32", [-1]),
        ("CLASSES", "INT32", [-1]),
    ]


def test_tritonclient_grpc_probabilities_equal_predict(stack: Stack, grpc_results: dict[str, Any]) -> None:
    r = grpc_results
    two = r["c.two_photos"]["ok"]
    assert (two["model_name"], two["model_version"], two["id"]) == ("resnet18", "2", "req-7")
    assert two["outputs"]["PROBABILITIES"]["shape"] == [2, 10]
    expected = [predict(stack, stack.photos["bus"]), predict(stack, stack.photos["zidane"])]
    assert_probabilities_equal(two["outputs"]["PROBABILITIES"]["data"], expected)
    # PIXELS, preprocessed here exactly as the service does, answers as the image does.
    astronaut = r["c.astronaut"]["ok"]["outputs"]["PROBABILITIES"]["data"]
    assert_probabilities_equal(
        r["c.pixels"]["ok"]["outputs"]["PROBABILITIES"]["data"], [dict(enumerate(astronaut[0]))]
    )
    # The classification extension: the 3 best as "score:index:label", best first.
    (row,) = r["c.top3"]["ok"]["outputs"]["PROBABILITIES"]["data"]
    best = sorted(expected[0].items(), key=lambda item: -item[1])[:3]
    assert [(int(s.split(":")[1]), s.split(":")[2]) for s in row] == [(i, f"class_{i}") for i, _ in best]
    assert [float(s.split(":")[0]) for s in row] == pytest.approx([p for _, p in best], abs=1e-5)
    version_1 = r["c.version_1"]["ok"]
    assert version_1["model_version"] == "1"
    assert_probabilities_equal(
        version_1["outputs"]["PROBABILITIES"]["data"], [predict(stack, stack.photos["bus"], version="1")]
    )


@pytest.mark.parametrize(
    ("step", "status", "says"),
    [
        ("c.two_inputs", "INVALID_ARGUMENT", "exactly one input"),
        ("c.wrong_datatype", "INVALID_ARGUMENT", "must be BYTES"),
        ("c.wrong_shape", "INVALID_ARGUMENT", "[-1, 3, 224, 224]"),
        ("c.not_an_image", "INVALID_ARGUMENT", "image"),
        ("c.too_many", "INVALID_ARGUMENT", f"1 to {MAX_BATCH}"),
        ("c.unknown_model", "NOT_FOUND", "nope"),
        ("c.unknown_version", "NOT_FOUND", "version"),
        ("c.unknown_output", "INVALID_ARGUMENT", "LOGITS"),
        ("c.unknown_parameter", "INVALID_ARGUMENT", "top_k"),
        ("c.detection_model_here", "NOT_FOUND", "detection"),
        ("d.bad_conf", "INVALID_ARGUMENT", "conf"),
        ("d.two_images", "INVALID_ARGUMENT", "[1]"),
    ],
)
def test_tritonclient_grpc_bad_input_gets_the_status_triton_clients_expect(
    grpc_results: dict[str, Any], step: str, status: str, says: str
) -> None:
    error = grpc_results[step]["error"]
    assert error["status"] == f"StatusCode.{status}"
    assert says in error["message"]
    assert "ok" in grpc_results["c.still_up"]


def test_tritonclient_grpc_boxes_equal_detect(stack: Stack, grpc_results: dict[str, Any]) -> None:
    for step, photo, form in (
        ("d.boxes", "bus", {"conf": "0.3", "iou": "0.6", "max_det": "20"}),
        ("d.defaults", "zidane", {}),
    ):
        outputs = grpc_results[step]["ok"]["outputs"]
        boxes = np.asarray(outputs["BOXES"]["data"], dtype=np.float64).reshape(-1, 4)
        rows = np.column_stack([boxes, outputs["SCORES"]["data"], outputs["CLASSES"]["data"]])
        expected = np.asarray(detect(stack, stack.photos[photo], **form), dtype=np.float64).reshape(-1, 6)
        assert len(rows) > 0 and rows.shape == expected.shape
        np.testing.assert_allclose(rows, expected, atol=1e-3, rtol=0)
        assert outputs["CLASSES"]["datatype"] == "INT32"


# -- REST, through the gateway ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(stack.gateway.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def http_image(photo: bytes) -> httpclient.InferInput:
    tensor = httpclient.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
    return tensor


def test_tritonclient_http_health_metadata_and_infer_through_the_gateway(
    stack: Stack, http: httpclient.InferenceServerClient
) -> None:
    h = stack.credentials
    assert http.is_server_live(headers=h()) and http.is_server_ready(headers=h())
    assert "binary_tensor_data" in http.get_server_metadata(headers=h())["extensions"]
    assert http.is_model_ready("resnet18", headers=h()) and http.is_model_ready("yolo11n", headers=h())
    assert not http.is_model_ready("nope", headers=h())
    metadata = http.get_model_metadata("resnet18", "2", headers=h())
    assert metadata["versions"] == ["1", "2"] and metadata["outputs"][0]["shape"] == [-1, 10]
    assert http.get_model_metadata("yolo11n", headers=h())["inputs"] == [
        {"name": "IMAGE", "datatype": "BYTES", "shape": [1]}
    ]
    expected = predict(stack, stack.photos["bus"])
    # Binary tensors both ways (tritonclient's default), then the output in JSON, with the classification
    # extension (image bytes are not UTF-8: tritonclient sends them binary; plain JSON takes base64, below).
    result = http.infer("resnet18", [http_image(stack.photos["bus"])], headers=h())
    assert_probabilities_equal(result.as_numpy("PROBABILITIES"), [expected])
    top2 = http.infer(
        "resnet18",
        [http_image(stack.photos["bus"])],
        outputs=[httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False, class_count=2)],
        headers=h(),
    )
    labels = [str(s).split(":")[2] for s in top2.as_numpy("PROBABILITIES")[0]]  # JSON: str elements
    assert labels == [f"class_{i}" for i, _ in sorted(expected.items(), key=lambda item: -item[1])[:2]]
    boxes = http.infer("yolo11n", [http_image(stack.photos["zidane"])], headers=h())
    rows = np.column_stack([boxes.as_numpy("BOXES"), boxes.as_numpy("SCORES"), boxes.as_numpy("CLASSES")])
    np.testing.assert_allclose(
        rows, np.asarray(detect(stack, stack.photos["zidane"])).reshape(-1, 6), atol=1e-3
    )


def test_plain_json_with_base64_images_is_accepted(stack: Stack) -> None:
    body = {
        "id": "j1",
        "inputs": [
            {
                "name": "IMAGE",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [b64(stack.photos["bus"])],
            }
        ],
    }
    reply = httpx.post(
        f"{stack.gateway}/v2/models/resnet18/versions/2/infer", json=body, headers=stack.headers, timeout=60
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert (answer["id"], answer["model_version"]) == ("j1", "2")
    (output,) = answer["outputs"]
    assert output["shape"] == [1, 10]
    assert_probabilities_equal([output["data"]], [predict(stack, stack.photos["bus"])])


def test_http_errors_are_4xx_with_the_specifications_error_body(
    stack: Stack, http: httpclient.InferenceServerClient
) -> None:
    h = stack.credentials
    with pytest.raises(InferenceServerException) as unknown:
        http.infer("nope", [http_image(stack.photos["bus"])], headers=h())
    assert unknown.value.status() == "404" and "nope" in unknown.value.message()
    pixels = httpclient.InferInput("PIXELS", [1, 3, 8, 8], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as shape:
        http.infer("resnet18", [pixels], headers=h())
    assert shape.value.status() == "400" and "[-1, 3, 224, 224]" in shape.value.message()
    url = f"{stack.gateway}/v2/models/resnet18/infer"
    image = {"name": "IMAGE", "datatype": "BYTES", "shape": [1]}
    for body, says in (
        (b"{not json", "not valid JSON"),
        (
            json.dumps({"inputs": [{**image, "parameters": {"binary_data_size": 99}}]}).encode(),
            "binary_data_size",
        ),
        (
            json.dumps(
                {"inputs": [{**image, "parameters": {"content_type": "base64"}, "data": ["***"]}]}
            ).encode(),
            "base64",
        ),
    ):
        reply = httpx.post(url, content=body, headers=h(), timeout=30)
        assert reply.status_code == 400 and says in reply.json()["error"]
    bad_header = httpx.post(
        url, content=b"{}", headers={**h(), "Inference-Header-Content-Length": "50"}, timeout=30
    )
    assert bad_header.status_code == 400 and "Inference-Header-Content-Length" in bad_header.json()["error"]
    assert httpx.post(url, content=b"{}", timeout=30).status_code == 401  # the same credentials as /predict
    assert httpx.get(f"{stack.gateway}/v2/health/ready", timeout=30).status_code == 401


def test_what_a_script_can_send_gets_a_4xx_never_a_5xx(stack: Stack) -> None:
    """Malformed values found by an attack review: each a 400 with the specification's error body."""
    h = stack.credentials
    url = f"{stack.gateway}/v2/models/resnet18/infer"
    image = {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    cases: list[tuple[bytes, dict[str, bytes], str]] = [
        # "²" passes str.isdigit() but not int()
        (b"{}", {"Inference-Header-Content-Length": b"\xb2"}, "Inference-Header-Content-Length"),
        (b"{}", {"Inference-Header-Content-Length": b"9" * 5000}, "Inference-Header-Content-Length"),
        (b"[" * 100_000 + b"]" * 100_000, {}, "nested too deeply"),
        (b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}', {},
         "surrogate"),
        (json.dumps({"parameters": {"x": 2**70}, "inputs": [image]}).encode(), {}, "64-bit"),
        (json.dumps({"inputs": [image], "outputs": 5}).encode(), {}, "outputs must be a list"),
        (
            json.dumps({"inputs": [{"name": "PIXELS", "datatype": "FP32", "shape": [0, 2**62], "data": []}]})
            .encode(),
            {},
            "elements",
        ),
    ]  # fmt: skip
    for body, headers, says in cases:
        pairs = [(k.encode(), v.encode()) for k, v in h().items()] + [
            (k.encode(), v) for k, v in headers.items()
        ]
        reply = httpx.post(url, content=body, headers=pairs, timeout=60)
        assert reply.status_code == 400, (body[:80], reply.status_code, reply.text[:300])
        assert says in reply.json()["error"], reply.text[:300]
    # Detector parameters on a model the gateway has not routed yet: the classifier says NOT_FOUND first.
    photo = {**image, "data": [b64(stack.photos["bus"])], "parameters": {"content_type": "base64"}}
    fresh = httpx.post(
        f"{stack.gateway}/v2/models/yolo11n/infer",
        json={"inputs": [photo], "parameters": {"conf": 0.3}},
        headers=h(),
        timeout=60,
    )
    assert fresh.status_code == 200, fresh.text


# -- load ------------------------------------------------------------------------------------------------
def test_async_tritonclient_load_runs_beside_native_classify(stack: Stack, tmp_path: Path) -> None:
    # The timed comparison (target ratio >= 0.9) is benchmarks/oip.py's; here its phases only have to run.
    out = tmp_path / "oip.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.oip",
            "--address",
            stack.classifier,
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = json.loads(out.read_text())
    assert result["native_rps"] > 0 and result["oip_rps"] > 0 and result["concurrency"] == 8
    assert result["ratio"] == pytest.approx(result["oip_rps"] / result["native_rps"])
