"""POST /explain and /predict/gradcam through the real gateway in front of a real explain_svc."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from tests.conftest import live_gateway, publish_random_model, start_classifier
from vision.models.store import ModelStore


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    store = ModelStore(Path(tmp_path_factory.mktemp("store")) / "models")
    publish_random_model(store, "resnet18", classes=[f"class_{i}" for i in range(10)])
    publish_random_model(store, "pets", arch="smallcnn", classes=["cat", "dog", "bird"])
    classifier, classifier_engine = start_classifier(store)
    explain, explain_engine = create_explain_server(ExplainSettings(port=0, model_dir=store.root))
    with (
        live_gateway(
            classifier_addr=f"127.0.0.1:{classifier.port}", explain_addr=f"127.0.0.1:{explain.port}"
        ) as gw,
        httpx.Client(base_url=gw.url, timeout=60) as http,
    ):
        yield http
    explain.stop(0).wait()
    classifier.stop(0).wait()
    explain_engine.close()
    classifier_engine.close()  # type: ignore[attr-defined]


def png_from_data_uri(uri: str, media_type: str = "image/png") -> Image.Image:
    prefix = f"data:{media_type};base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def upload(image: bytes, name: str = "photo.jpg") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, image, "image/jpeg")}


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_explain_returns_prediction_raw_heatmap_and_overlay(
    client: httpx.Client, bus_jpeg: bytes, method: str
) -> None:
    reply = client.post("/explain", files=upload(bus_jpeg), data={"method": method})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True and body["method"] == method and body["layer"] == "layer4"
    assert body["model"] == {"name": "resnet18", "version": "1"}
    assert len(body["top5"]) == 5 and body["top5"][0]["class"] == body["prediction"]["class"]
    assert body["target_class"]["class"] == body["prediction"]["class"]  # default: the predicted class
    heatmap = png_from_data_uri(body["heatmap"])
    assert heatmap.mode == "L" and heatmap.size == (224, 224)
    assert np.asarray(heatmap).max() == 255  # normalised to [0, 1] -> 0..255
    overlay = png_from_data_uri(body["overlay_image"], "image/jpeg")  # the default format
    assert overlay.size == (405, 540)  # bus.jpg (810 x 1080) halved: the longer side fits the default 640


def test_overlay_max_side_asks_for_a_larger_overlay(client: httpx.Client, bus_jpeg: bytes) -> None:
    data = {"overlay_max_side": "2048", "overlay_format": "png"}
    reply = client.post("/explain", files=upload(bus_jpeg), data=data)
    assert reply.status_code == 200, reply.text
    overlay = png_from_data_uri(reply.json()["overlay_image"])
    assert overlay.format == "PNG" and overlay.size == Image.open(io.BytesIO(bus_jpeg)).size


@pytest.mark.parametrize("target", ["2", "bird"])
def test_target_class_is_an_index_or_a_label(client: httpx.Client, bus_jpeg: bytes, target: str) -> None:
    reply = client.post(
        "/explain",
        files=upload(bus_jpeg),
        data={
            "model": "pets",
            "target_class": target,
            "layer": "features.3",
            "colormap": "viridis",
            "alpha": "0.3",
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["target_class"]["class_id"] == 2 and body["target_class"]["class"] == "bird"
    assert body["layer"] == "features.3" and body["model"]["name"] == "pets"


def test_predict_gradcam_keeps_the_original_shape(client: httpx.Client, zidane_jpeg: bytes) -> None:
    reply = client.post("/predict/gradcam", files=upload(zidane_jpeg))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) >= {"success", "prediction", "top5", "gradcam", "model"}
    assert set(body["prediction"]) == {"class", "class_id", "confidence", "confidence_percent"}
    # the service's default overlay: JPEG, zidane.jpg (1280 x 720) halved to fit 640
    assert png_from_data_uri(body["gradcam"]["heatmap_image"], "image/jpeg").size == (640, 360)
    assert body["prediction"]["class"] in body["gradcam"]["description"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "lime"}, "accepted: cam, gradcam, gradcampp"),
        ({"layer": "layer9"}, "accepted: conv1, bn1"),
        ({"method": "cam", "layer": "layer2"}, "last conv block"),
        ({"target_class": "10"}, "out of range"),
        ({"target_class": "-1"}, "out of range"),
        ({"target_class": "zebra"}, "unknown target label 'zebra'"),
        # malformed numbers were 500s: a non-number is a label, an int32 overflow names the field
        ({"target_class": "--1"}, "unknown target label '--1'"),
        ({"target_class": "\u00b2"}, "unknown target label '\u00b2'"),
        ({"target_class": "99999999999"}, "target_class is out of range"),
        ({"target_class": "9" * 400}, "target_class is out of range"),
        ({"alpha": "1.5"}, "alpha"),
        ({"alpha": "-0.1"}, "alpha"),
        ({"colormap": "rainbow"}, "accepted: jet, viridis, inferno, turbo, gray"),
        ({"overlay_max_side": "4096"}, "overlay_max_side must be between 64 and 2048"),
        ({"overlay_max_side": "-5"}, "overlay_max_side"),
        ({"overlay_max_side": "9" * 40}, "overlay_max_side"),
        ({"overlay_max_side": "big"}, "overlay_max_side"),
        ({"overlay_format": "gif"}, "unknown overlay_format 'gif'; accepted: jpeg, png"),
        ({"model": "nope"}, "available"),
    ],
)
def test_bad_explain_options_get_400_naming_what_is_accepted(
    client: httpx.Client, bus_jpeg: bytes, data: dict[str, str], message: str
) -> None:
    reply = client.post("/explain", files=upload(bus_jpeg), data=data)
    assert reply.status_code in (400, 404), reply.text
    body = reply.json()
    assert body["success"] is False and message in body["error"]["message"]
    assert client.post("/explain", files=upload(bus_jpeg)).status_code == 200


@pytest.mark.parametrize(
    ("image", "message"), [(b"", "empty"), (b"%PDF-1.4 fake", "PDF images are not accepted")]
)
def test_bad_uploads_are_rejected_like_the_classify_path(
    client: httpx.Client, bus_jpeg: bytes, image: bytes, message: str
) -> None:
    for route in ("/explain", "/predict/gradcam"):
        reply = client.post(route, files=upload(image))
        assert reply.status_code == 400 and message in reply.json()["error"]["message"]
    assert client.post("/predict/gradcam", files=upload(bus_jpeg)).status_code == 200


def test_concurrent_explanations_all_succeed(
    client: httpx.Client, bus_jpeg: bytes, zidane_jpeg: bytes
) -> None:
    def one(i: int) -> httpx.Response:
        method = ("cam", "gradcam", "gradcampp")[i % 3]
        return client.post("/explain", files=upload((bus_jpeg, zidane_jpeg)[i % 2]), data={"method": method})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(16)))
    assert [r.status_code for r in replies] == [200] * 16
    assert max(r.json()["timing_ms"]["batch_size"] for r in replies) > 1


def test_without_explain_svc_the_routes_answer_503_not_deployed(
    classifier: tuple[object, ModelStore], bus_jpeg: bytes
) -> None:
    server = classifier[0]
    with live_gateway(classifier_addr=f"127.0.0.1:{server.port}") as gw:  # type: ignore[attr-defined]
        reply = httpx.post(f"{gw.url}/explain", files=upload(bus_jpeg), timeout=30)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "not_deployed"
    assert "VISION_GATEWAY_EXPLAIN_ADDR" in reply.json()["error"]["message"]
