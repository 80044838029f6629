"""First run: ImageNet ResNet18 fetched into an empty store when online; offline, a fast, clear failure.

The internet is the one boundary we cannot reach here, so "download.pytorch.org" is played by a local HTTP
server on loopback serving a real (seeded, random) resnet18 state dict under torch.hub's file-name convention.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
import torch
from torchvision import models

from tests.conftest import start_classifier
from vision.models.pretrained import PretrainedUnavailable, ensure_default_model, fetch_imagenet
from vision.models.store import ModelStore
from vision.v1 import classifier_pb2, classifier_pb2_grpc


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(0)
    staging = root / "staging.pth"
    torch.save(models.resnet18().state_dict(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    staging.rename(root / name)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{name}", root / name
    httpd.shutdown()


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"


def test_imagenet_weights_land_in_the_store_with_the_1000_class_names(
    store: ModelStore, weights_server: tuple[str, Path]
) -> None:
    url, _ = weights_server
    version = fetch_imagenet(store, "resnet18", url=url, timeout=10)
    assert (version.name, version.version) == ("resnet18", "1")
    assert version.metadata.num_classes == 1000
    assert version.metadata.class_names[:2] == ["tench", "goldfish"]
    assert version.metadata.provenance["url"] == url
    assert version.metadata.provenance["source"].startswith("torchvision:")


def test_a_file_whose_hash_does_not_match_its_name_is_rejected(
    store: ModelStore, weights_server: tuple[str, Path]
) -> None:
    url, path = weights_server
    bad = path.parent / "resnet18-00000000.pth"
    bad.write_bytes(path.read_bytes())
    with pytest.raises(PretrainedUnavailable, match="sha256"):
        fetch_imagenet(store, "resnet18", url=url.replace(path.name, bad.name), timeout=10)
    assert store.names() == []


def test_offline_the_attempt_fails_fast_and_says_what_to_do(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    start = time.perf_counter()
    assert ensure_default_model(store, url=closed_port_url(), timeout=5) is False
    assert time.perf_counter() - start < 2
    assert "vision models import" in caplog.text
    assert store.names() == []


def test_a_first_run_with_an_empty_store_starts_at_once_and_serves_the_fetched_model(
    store: ModelStore, weights_server: tuple[str, Path], bus_jpeg: bytes
) -> None:
    url, _ = weights_server
    server, engine = start_classifier(store, fetch_pretrained=True, pretrained_url=url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = classifier_pb2_grpc.ClassifierStub(ch)
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = stub.Classify(classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=30)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    assert time.monotonic() < deadline, "the fetched model was never served"
                    time.sleep(0.2)
        assert reply.model.name == "resnet18"
        assert len(reply.classes) == 5
    finally:
        server.stop(0).wait()
        engine.close()  # type: ignore[attr-defined]
