"""detector_svc as a real gRPC server on loopback, serving a real Ultralytics YOLO11n imported from a ``.pt``:
its answers equal ``YOLO(original.pt).predict(...)`` on the photos that ship with ultralytics, alone and
under concurrent load."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from detector_svc.checkpoints import import_yolo_checkpoint
from tests.conftest import ultralytics_asset
from tests.support.detector import (
    YOLO,
    as_float32,
    assert_same_detections,
    make_yolo_checkpoint,
    reply_rows,
    rows,
    start_detector,
)
from vision.models.store import ModelStore
from vision.v1 import common_pb2, detector_pb2, detector_pb2_grpc

# (proto fields, the same parameters for YOLO.predict): the service's defaults are conf 0.25, iou 0.45.
PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "defaults": ({}, {"conf": 0.25, "iou": 0.45}),
    "thresholds": ({"conf": 0.3, "iou": 0.6, "max_det": 20}, {"conf": 0.3, "iou": 0.6, "max_det": 20}),
    "classes": (
        {"class_ids": [0, 2], "class_names": ["bus", "car", "tie"]},
        {"conf": 0.25, "iou": 0.45, "classes": [0, 2, 5, 27]},
    ),
    "imgsz": ({"imgsz": 320, "conf": 0.26}, {"imgsz": 320, "conf": 0.26, "iou": 0.45}),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")


@pytest.fixture(scope="module")
def reference_model(checkpoint: Path) -> Any:
    """The original ``.pt`` loaded by Ultralytics itself: the answers to match."""
    return YOLO(str(checkpoint), task="detect")


@pytest.fixture(scope="module")
def stub(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[detector_pb2_grpc.DetectorStub]:
    store = ModelStore(tmp_path_factory.mktemp("store") / "models")
    import_yolo_checkpoint(store, checkpoint, "yolo11n")
    server, engine = start_detector(store, max_batch_delay_ms=20)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield detector_pb2_grpc.DetectorStub(channel)
    server.stop(0).wait()
    engine.close()


def detect(stub: detector_pb2_grpc.DetectorStub, photo: str, **fields: Any) -> detector_pb2.DetectResponse:
    request = detector_pb2.DetectRequest(image=ultralytics_asset(photo).read_bytes(), **fields)
    reply: detector_pb2.DetectResponse = stub.Detect(request, timeout=60)
    return reply


def expected(reference_model: Any, photo: str, params: dict[str, Any]) -> list[Any]:
    result = reference_model.predict(str(ultralytics_asset(photo)), verbose=False, **params)[0]
    return as_float32(sorted(rows(result.boxes.data), key=lambda r: -r[4]))


@pytest.mark.parametrize("params", PARAMS.values(), ids=PARAMS.keys())
@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_boxes_classes_and_scores_equal_ultralytics_predict_on_the_original_weights(
    stub: detector_pb2_grpc.DetectorStub,
    reference_model: Any,
    photo: str,
    params: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    fields, predict_params = params
    reply = detect(stub, photo, **fields)
    assert reply_rows(reply) == expected(reference_model, photo, predict_params)
    names = reference_model.names
    assert [b.class_name for b in reply.boxes] == [names[b.class_id] for b in reply.boxes]
    assert all(
        b.width == pytest.approx(b.x2 - b.x1) and b.height == pytest.approx(b.y2 - b.y1) for b in reply.boxes
    )
    size = Image.open(ultralytics_asset(photo)).size
    assert (reply.image_width, reply.image_height) == size
    assert all(0 <= b.x1 <= b.x2 <= size[0] and 0 <= b.y1 <= b.y2 <= size[1] for b in reply.boxes)


def test_the_test_model_finds_boxes_at_the_default_conf(stub: detector_pb2_grpc.DetectorStub) -> None:
    counts = [len(detect(stub, photo).boxes) for photo in ("bus.jpg", "zidane.jpg")]
    assert all(count > 0 for count in counts), counts


def test_the_annotated_png_is_ultralytics_plot_of_the_same_result(
    stub: detector_pb2_grpc.DetectorStub, reference_model: Any
) -> None:
    reply = detect(stub, "zidane.jpg", annotate=True)
    drawn = np.asarray(Image.open(io.BytesIO(reply.annotated_png)).convert("RGB"))
    result = reference_model.predict(str(ultralytics_asset("zidane.jpg")), conf=0.25, iou=0.45, verbose=False)
    assert np.array_equal(drawn, result[0].plot()[:, :, ::-1])
    assert not np.array_equal(drawn, np.asarray(Image.open(ultralytics_asset("zidane.jpg")).convert("RGB")))
    assert detect(stub, "zidane.jpg").annotated_png == b""  # annotate is off by default over gRPC


def test_the_reply_names_the_model_version_and_where_time_went(stub: detector_pb2_grpc.DetectorStub) -> None:
    reply = detect(stub, "bus.jpg", model=common_pb2.ModelRef(name="yolo11n"))
    assert (reply.model.name, reply.model.version) == ("yolo11n", "1")
    timing = reply.timing
    assert timing.inference_ms > 0 and timing.total_ms >= timing.inference_ms and timing.batch_size >= 1


def test_concurrent_requests_are_batched_and_each_equals_its_single_request_answer(
    stub: detector_pb2_grpc.DetectorStub,
) -> None:
    cases = [(photo, name) for photo in ("bus.jpg", "zidane.jpg") for name in ("defaults", "thresholds")]
    alone = {case: reply_rows(detect(stub, case[0], **PARAMS[case[1]][0])) for case in cases}

    def one(i: int) -> tuple[tuple[str, str], detector_pb2.DetectResponse]:
        case = cases[i % len(cases)]
        return case, detect(stub, case[0], **PARAMS[case[1]][0])

    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(one, range(24)))
    for case, reply in replies:
        if reply.timing.batch_size == 1:
            assert reply_rows(reply) == alone[case], case  # bit for bit
        else:
            assert_same_detections(reply_rows(reply), alone[case])
    assert max(reply.timing.batch_size for _, reply in replies) > 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"conf": 1.5}, "conf must be a number between 0 and 1"),
        ({"conf": -0.1}, "conf must be a number between 0 and 1"),
        ({"conf": float("nan")}, "conf must be a number between 0 and 1"),
        ({"iou": 1.01}, "iou must be a number between 0 and 1"),
        ({"max_det": 0}, "max_det must be between 1 and 1000"),
        ({"max_det": -3}, "max_det must be between 1 and 1000"),
        ({"max_det": 2_000_000_000}, "max_det must be between 1 and 1000"),
        ({"class_names": ["unicorn"]}, "unknown class name 'unicorn'; the model's classes are 'person'"),
        ({"class_ids": [80]}, "class id 80 is out of range: the model has classes 0..79"),
        ({"class_ids": [-1]}, "class id -1 is out of range"),
        ({"imgsz": 0}, "imgsz must be a positive multiple of 32"),
        ({"imgsz": 33}, "imgsz must be a positive multiple of 32"),
        ({"imgsz": -32}, "imgsz must be a positive multiple of 32"),
        ({"imgsz": 4096}, "up to 2048"),
        ({"image": b""}, "the file is empty"),
        ({"image": b"%PDF-1.4 not a photo"}, "PDF images are not accepted"),
        ({"image": b"\xff\xd8\xff\xe0" + bytes(100)}, "header is damaged or truncated"),
        ({"image": ultralytics_asset("bus.jpg").read_bytes()[:5000]}, "corrupt or truncated"),
        ({"model": common_pb2.ModelRef(name="nope")}, "model 'nope' not found"),
    ],
)
def test_bad_requests_are_refused_with_a_message_and_the_service_stays_up(
    stub: detector_pb2_grpc.DetectorStub, fields: dict[str, Any], message: str
) -> None:
    request = detector_pb2.DetectRequest(image=ultralytics_asset("zidane.jpg").read_bytes())
    for key, value in fields.items():
        if key == "model":
            request.model.CopyFrom(value)
        elif isinstance(value, list):
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Detect(request, timeout=30)
    expected_code = grpc.StatusCode.NOT_FOUND if "model" in fields else grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.code() == expected_code
    assert message in caught.value.details()
    assert detect(stub, "zidane.jpg", max_det=1).boxes


def test_a_full_queue_answers_resource_exhausted_and_the_rest_succeed(
    checkpoint: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    import_yolo_checkpoint(store, checkpoint, "yolo11n")
    server, engine = start_detector(store, max_queue=1, max_batch_size=1)
    image = ultralytics_asset("bus.jpg").read_bytes()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = detector_pb2_grpc.DetectorStub(channel).Detect

            def one(_: int) -> grpc.StatusCode:
                try:
                    call(detector_pb2.DetectRequest(image=image), timeout=60)
                except grpc.RpcError as exc:
                    assert (
                        exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "queue is full" in exc.details()
                    )
                    return exc.code()
                return grpc.StatusCode.OK

            with ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(one, range(12)))
    finally:
        server.stop(0).wait()
        engine.close()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
