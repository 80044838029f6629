"""Shared fixtures: a model store with seeded models, real photos, a real classifier on loopback, the
real gateway served by uvicorn on loopback. Nothing here is faked."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Ultralytics (imported by some tests for its bundled photos) must not reach the network.
os.environ.setdefault("YOLO_OFFLINE", "1")
# Many servers run in one test process: none takes its default metrics port (9100-9104) unless a test says so.
os.environ.setdefault("VISION_GATEWAY_METRICS_PORT", "0")
os.environ.setdefault("VISION_CLASSIFIER_METRICS_PORT", "0")
os.environ.setdefault("VISION_EXPLAIN_METRICS_PORT", "0")
os.environ.setdefault("VISION_DETECTOR_METRICS_PORT", "0")
os.environ.setdefault("VISION_TRAINER_METRICS_PORT", "0")
# Most tests are about the services, not the runtime: eager torch serves them (no export per fresh store). The
# converted runtimes and the default (auto) are tested in tests/test_runtime*.py, which ask for them.
os.environ.setdefault("VISION_CLASSIFIER_RUNTIME", "torch")
os.environ.setdefault("VISION_EXPLAIN_RUNTIME", "torch")
os.environ.setdefault("VISION_DETECTOR_RUNTIME", "torch")

import grpc
import httpx
import pytest
import torch
import uvicorn
from PIL import Image

from classifier_svc.config import ClassifierSettings
from classifier_svc.server import create_classifier_server
from gateway.config import GatewaySettings
from gateway.main import create_app
from vision.models.architectures import build_model
from vision.models.store import ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import publish_state_dict
from vision.rpc.server import GrpcServer


def ultralytics_asset(name: str) -> Path:
    """A real photo shipped inside the ultralytics package (bus.jpg, zidane.jpg)."""
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "assets" / name


@pytest.fixture(scope="session")
def bus_jpeg() -> bytes:
    return ultralytics_asset("bus.jpg").read_bytes()


@pytest.fixture(scope="session")
def zidane_jpeg() -> bytes:
    return ultralytics_asset("zidane.jpg").read_bytes()


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """scikit-image's astronaut photo (512x512 RGB)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


ModelFactory = Callable[..., ModelVersion]


def publish_random_model(
    store: ModelStore,
    name: str = "resnet18",
    arch: str = "resnet18",
    classes: list[str] | None = None,
    seed: int = 0,
) -> ModelVersion:
    """A seeded, randomly initialised model published through the real store."""
    torch.manual_seed(seed)
    classes = classes or [f"class_{i}" for i in range(10)]
    model = build_model(arch, len(classes))
    metadata = ModelMetadata(
        architecture=arch, class_names=classes, provenance={"source": f"test:seed={seed}"}
    )
    return publish_state_dict(store, name, model.state_dict(), metadata)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def start_classifier(store: ModelStore, **overrides: object) -> tuple[GrpcServer, object]:
    fields: dict[str, object] = {
        "port": 0,
        "model_dir": store.root,
        "fetch_pretrained": False,
        "poll_interval_s": 0.2,
    }
    settings = ClassifierSettings(**{**fields, **overrides})  # type: ignore[arg-type]
    return create_classifier_server(settings)


@pytest.fixture
def classifier(store: ModelStore) -> Iterator[tuple[GrpcServer, ModelStore]]:
    """A real classifier_svc on loopback serving a seeded 10-class resnet18 named 'resnet18'."""
    publish_random_model(store)
    server, engine = start_classifier(store)
    yield server, store
    server.stop(0).wait()
    engine.close()  # type: ignore[attr-defined]


@pytest.fixture
def channel(classifier: tuple[GrpcServer, ModelStore]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{classifier[0].port}") as ch:
        yield ch


class LiveServer:
    """uvicorn serving an ASGI app on a free loopback port, in a background thread."""

    def __init__(self, app: object) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def live_gateway(**settings: object) -> LiveServer:
    return LiveServer(create_app(GatewaySettings(**settings)))  # type: ignore[arg-type]


@pytest.fixture
def gateway(classifier: tuple[GrpcServer, ModelStore]) -> Iterator[httpx.Client]:
    """The real gateway (uvicorn on loopback) in front of the real classifier; an httpx client to it."""
    with (
        live_gateway(classifier_addr=f"127.0.0.1:{classifier[0].port}", timeout_s=30) as live,
        httpx.Client(base_url=live.url, timeout=60) as client,
    ):
        yield client
