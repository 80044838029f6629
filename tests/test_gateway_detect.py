"""POST /detect through the real gateway (uvicorn on loopback) in front of a real detector_svc serving an
Ultralytics YOLO11n imported from a ``.pt``: the original project's response shape, Ultralytics' answers."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from detector_svc.checkpoints import import_yolo_checkpoint
from tests.conftest import live_gateway, ultralytics_asset
from tests.support.detector import (
    YOLO,
    as_float32,
    assert_same_detections,
    make_yolo_checkpoint,
    rows,
    start_detector,
)
from vision.models.store import ModelStore

UNUSED_CLASSIFIER = "127.0.0.1:9"  # required by the gateway's settings; /detect never calls it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")


@pytest.fixture(scope="module")
def client(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    store = ModelStore(tmp_path_factory.mktemp("store") / "models")
    import_yolo_checkpoint(store, checkpoint, "yolo11n")
    detector, engine = start_detector(store, max_batch_delay_ms=20)
    with (
        live_gateway(classifier_addr=UNUSED_CLASSIFIER, detector_addr=f"127.0.0.1:{detector.port}") as gw,
        httpx.Client(base_url=gw.url, timeout=60) as http,
    ):
        yield http
    detector.stop(0).wait()
    engine.close()


def upload(photo: str = "bus.jpg", data: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    image = data if data is not None else ultralytics_asset(photo).read_bytes()
    return {"file": (photo, image, "image/jpeg")}


def json_rows(body: dict[str, Any]) -> list[Any]:
    return [
        (d["bbox"]["x1"], d["bbox"]["y1"], d["bbox"]["x2"], d["bbox"]["y2"], d["confidence"], d["class_id"])
        for d in body["detections"]
    ]


def ultralytics_rows(checkpoint: Path, photo: str, **params: Any) -> list[Any]:
    model = YOLO(str(checkpoint), task="detect")
    result = model.predict(str(ultralytics_asset(photo)), verbose=False, **params)
    return as_float32(sorted(rows(result[0].boxes.data), key=lambda r: -r[4]))


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_detect_answers_in_the_original_shape_with_ultralytics_boxes(
    client: httpx.Client, checkpoint: Path, photo: str
) -> None:
    reply = client.post("/detect", files=upload(photo))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) >= {"success", "num_objects", "detections", "annotated_image", "model"}
    assert body["success"] is True and body["model"] == {"name": "yolo11n", "version": "1"}
    assert body["num_objects"] == len(body["detections"]) > 0
    first = body["detections"][0]
    assert set(first) == {"class", "class_id", "confidence", "bbox"}
    assert set(first["bbox"]) == {"x1", "y1", "x2", "y2", "width", "height"}
    assert json_rows(body) == ultralytics_rows(checkpoint, photo, conf=0.25, iou=0.45)
    uri = body["annotated_image"]
    assert uri.startswith("data:image/png;base64,")
    annotated = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert annotated.size == Image.open(ultralytics_asset(photo)).size


def test_thresholds_and_class_filters_are_form_fields(client: httpx.Client, checkpoint: Path) -> None:
    data = {"conf": "0.3", "iou": "0.6", "max_det": "10", "classes": "0, car,bus", "annotate": "false"}
    body = client.post("/detect", files=upload(), data=data).json()
    assert body["annotated_image"] is None
    assert json_rows(body) == ultralytics_rows(
        checkpoint, "bus.jpg", conf=0.3, iou=0.6, max_det=10, classes=[0, 2, 5]
    )
    assert {d["class"] for d in body["detections"]} <= {"person", "car", "bus"}


@pytest.mark.parametrize(
    ("data", "image", "message"),
    [
        ({"conf": "1.5"}, None, "conf: Input should be less than or equal to 1"),
        ({"conf": "abc"}, None, "conf: Input should be a valid number"),
        ({"iou": "-0.2"}, None, "iou: Input should be greater than or equal to 0"),
        ({"max_det": "0"}, None, "max_det: Input should be greater than or equal to 1"),
        ({"max_det": "5000"}, None, "max_det must be between 1 and 1000"),  # the service's own limit
        ({"max_det": "100000000000"}, None, "max_det: Input should be less than or equal to 2147483647"),
        ({"classes": "unicorn"}, None, "unknown class name 'unicorn'"),
        ({"classes": "99"}, None, "class id 99 is out of range"),
        ({"classes": "99999999999"}, None, "classes is out of range"),
        ({"classes": "--1"}, None, "unknown class name '--1'"),
        ({"classes": "\u00b2"}, None, "unknown class name '\u00b2'"),
        ({"imgsz": "100"}, None, "imgsz: Input should be a multiple of 32"),
        ({"imgsz": "4096"}, None, "imgsz must be a positive multiple of 32 up to"),
        ({}, b"", "the file is empty"),
        ({}, b"%PDF-1.4 not a photo", "PDF images are not accepted"),
        ({}, b"GIF89a" + bytes(64), "GIF images are not accepted"),
    ],
)
def test_bad_input_is_a_400_with_a_message_and_the_service_stays_up(
    client: httpx.Client, data: dict[str, str], image: bytes | None, message: str
) -> None:
    reply = client.post("/detect", files=upload(data=image), data=data)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["success"] is False and message in body["error"]["message"]
    assert client.post("/detect", files=upload("zidane.jpg"), data={"annotate": "false"}).status_code == 200


def test_a_missing_file_is_a_400(client: httpx.Client) -> None:
    reply = client.post("/detect", data={"conf": "0.5"})
    assert reply.status_code == 400 and "missing field 'file'" in reply.json()["error"]["message"]


def test_concurrent_uploads_all_get_their_own_answer(client: httpx.Client) -> None:
    photos = ["bus.jpg", "zidane.jpg"]
    alone = {p: client.post("/detect", files=upload(p), data={"annotate": "false"}).json() for p in photos}

    def one(i: int) -> tuple[str, dict[str, Any]]:
        photo = photos[i % 2]
        return photo, client.post("/detect", files=upload(photo), data={"annotate": "false"}).json()

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(16)))
    for photo, body in replies:
        assert body["num_objects"] == alone[photo]["num_objects"]
        assert_same_detections(json_rows(body), json_rows(alone[photo]))


def test_without_detector_svc_detect_answers_503_not_deployed() -> None:
    with live_gateway(classifier_addr=UNUSED_CLASSIFIER) as gw:
        reply = httpx.post(f"{gw.url}/detect", files=upload(), timeout=30)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "not_deployed"
    assert "VISION_GATEWAY_DETECTOR_ADDR" in reply.json()["error"]["message"]


def test_models_lists_detection_models_as_the_detector_serves_them(
    checkpoint: Path, tmp_path: Path, bus_jpeg: bytes
) -> None:
    from tests.conftest import publish_random_model, start_classifier

    store = ModelStore(tmp_path / "models")
    publish_random_model(store)
    import_yolo_checkpoint(store, checkpoint, "yolo11n")
    classifier, classifier_engine = start_classifier(store)
    detector, detector_engine = start_detector(store)
    addresses = {
        "classifier_addr": f"127.0.0.1:{classifier.port}",
        "detector_addr": f"127.0.0.1:{detector.port}",
    }
    try:
        with live_gateway(**addresses) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
            assert http.post("/detect", files=upload()).status_code == 200
            listed = {m["name"]: m for m in http.get("/models").json()["models"]}
            # The classifier never loads a detection model: the detector's own view is the one shown.
            assert listed["yolo11n"]["task"] == "detection" and listed["yolo11n"]["loaded"] is True
            assert listed["yolo11n"]["runtime"] == "torch"  # what tests/conftest.py asks the detector for
            assert listed["resnet18"]["task"] == "classification" and listed["resnet18"]["loaded"] is True
            only = http.get("/models", params={"task": "detection"}).json()["models"]
            assert [m["name"] for m in only] == ["yolo11n"] and only[0]["loaded"] is True
    finally:
        detector.stop(0).wait()
        detector_engine.close()
        classifier.stop(0).wait()
        classifier_engine.close()  # type: ignore[attr-defined]
