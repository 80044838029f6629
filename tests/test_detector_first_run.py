"""detector_svc with an empty store, online and offline, beside classifiers, and with the network cut off.

The only fake here is the internet: the "GitHub release" of yolo11n.pt is a loopback HTTP server serving a
real Ultralytics checkpoint made in the test, and "offline" is a port nothing listens on.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from detector_svc.checkpoints import import_yolo_checkpoint
from tests.conftest import publish_random_model, start_classifier, ultralytics_asset
from tests.support.detector import make_yolo_checkpoint, start_detector
from vision.cli import main as vision_cli
from vision.models.store import ModelStore
from vision.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    detector_pb2,
    detector_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

NO_MODEL = "no detection model: import one with `vision models import yolo.pt --name yolo11n`"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")


def detect(port: int, **fields: Any) -> detector_pb2.DetectResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = detector_pb2.DetectRequest(image=ultralytics_asset("bus.jpg").read_bytes(), **fields)
        reply: detector_pb2.DetectResponse = detector_pb2_grpc.DetectorStub(channel).Detect(
            request, timeout=60
        )
        return reply


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def serves(port: int) -> bool:
    try:
        return detect(port).model.name == "yolo11n"
    except grpc.RpcError:
        return False


@pytest.fixture
def release_server(checkpoint: Path) -> Iterator[str]:
    """A loopback stand-in for github.com/ultralytics/assets/releases: serves the checkpoint's bytes."""
    body = checkpoint.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v8.3.0/yolo11n.pt"
    server.shutdown()


def test_online_with_an_empty_store_yolo11n_is_fetched_once_and_served(
    store: ModelStore, release_server: str
) -> None:
    server, engine = start_detector(store, fetch_default=True, default_weights_url=release_server)
    try:
        eventually(lambda: serves(server.port))
        version = store.get("yolo11n")
        assert version.metadata.provenance["source"] == f"download:{release_server}"
        assert not list(store.root.rglob("*.pt"))  # the pickle itself is never kept
    finally:
        server.stop(0).wait()
        engine.close()


def test_offline_and_empty_the_service_is_up_and_says_how_to_import_a_model(
    store: ModelStore, checkpoint: Path
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/yolo11n.pt"
    started = time.monotonic()
    server, engine = start_detector(store, fetch_default=True, default_weights_url=url, fetch_timeout_s=2)
    try:
        assert time.monotonic() - started < 30
        with pytest.raises(grpc.RpcError) as caught:
            detect(server.port)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and caught.value.details() == NO_MODEL
        args = ["models", "import", str(checkpoint), "--name", "yolo11n", "--model-dir", str(store.root)]
        assert vision_cli(args) == 0
        eventually(lambda: serves(server.port))  # picked up without a restart
    finally:
        server.stop(0).wait()
        engine.close()
        closed.close()


def test_a_store_shared_with_classifiers_keeps_each_service_to_its_own_task(
    store: ModelStore, checkpoint: Path, bus_jpeg: bytes
) -> None:
    publish_random_model(store, "pets", arch="smallcnn", classes=["cat", "dog"])
    import_yolo_checkpoint(store, checkpoint, "yolo11n")  # the newest model in the store
    classifier, classifier_engine = start_classifier(store)
    detector, detector_engine = start_detector(store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{classifier.port}") as channel:
            classify = classifier_pb2_grpc.ClassifierStub(channel).Classify
            assert classify(classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30).model.name == "pets"
            with pytest.raises(grpc.RpcError) as caught:
                classify(
                    classifier_pb2.ClassifyRequest(image=bus_jpeg, model=common_pb2.ModelRef(name="yolo11n"))
                )
            catalog = models_pb2_grpc.ModelCatalogStub(channel).ListModels
            listed = catalog(models_pb2.ListModelsRequest(task="classification"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'yolo11n' is a detection model, not classification" in caught.value.details()
        assert [m.name for m in listed.models] == ["pets"] and listed.default_model == "pets"
        assert ("yolo11n", "1") not in classifier_engine.registry.loaded()
        with grpc.insecure_channel(f"127.0.0.1:{detector.port}") as channel:
            catalog = models_pb2_grpc.ModelCatalogStub(channel).ListModels
            listed = catalog(models_pb2.ListModelsRequest(task="detection"), timeout=10)
        assert [(m.name, m.loaded, m.num_classes) for m in listed.models] == [("yolo11n", True, 80)]
        assert detect(detector.port).model.name == "yolo11n"
        with pytest.raises(grpc.RpcError) as caught:
            detect(detector.port, model=common_pb2.ModelRef(name="pets"))
        assert "'pets' is a classification model, not detection" in caught.value.details()
    finally:
        for server, engine in ((classifier, classifier_engine), (detector, detector_engine)):
            server.stop(0).wait()
            engine.close()  # type: ignore[attr-defined]


def test_with_the_network_cut_off_nothing_reaches_for_it_even_to_draw_non_latin_labels(
    tmp_path: Path, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError("network is cut off in this test")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(host)
            raise socket.gaierror("network is cut off in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    names = [f"объект {i}" if i % 2 else f"物体{i}" for i in range(80)]  # needs a Unicode font to draw
    import_yolo_checkpoint(store, make_yolo_checkpoint(tmp_path / "y.pt", names=names), "yolo11n")
    server, engine = start_detector(store)
    try:
        reply = detect(server.port, annotate=True)
    finally:
        server.stop(0).wait()
        engine.close()
    assert reply.boxes and reply.boxes[0].class_name in names and reply.annotated_png.startswith(b"\x89PNG")
    assert attempts == []
