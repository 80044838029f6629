"""The classifier benchmark's services (classifier_svc, gateway) and its three kinds of client: gRPC
``Classify``, HTTP ``POST /predict`` and the bare model in a thread."""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness.load import RPC_TIMEOUT_S, Call, grpc_channels, timing_fields
from benchmarks.harness.procs import Service, grpc_service, patched_environ
from vision.image.decode import decode_image
from vision.serving.classifier import LoadedClassifier
from vision.v1 import classifier_pb2, classifier_pb2_grpc


@contextlib.contextmanager
def classifier_service(
    args: argparse.Namespace, model_dir: Path, env: Mapping[str, str], log_dir: Path, model_name: str
) -> Iterator[Service]:
    """classifier_svc serving ``model_name`` from ``model_dir``: a subprocess, or in this process with
    ``--in-process``."""
    settings = {
        "VISION_MODEL_DIR": str(model_dir),
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
        "VISION_CLASSIFIER_DEVICE": args.device,
        "VISION_CLASSIFIER_DEFAULT_MODEL": model_name,
        "VISION_CLASSIFIER_MAX_BATCH_SIZE": str(args.max_batch_size),
    }
    if args.max_batch_delay_ms is not None:
        settings["VISION_CLASSIFIER_MAX_BATCH_DELAY_MS"] = str(args.max_batch_delay_ms)
    if args.in_process:
        with in_process_classifier(settings) as service:
            yield service
        return
    extra = dict(item.split("=", 1) for item in args.service_env)
    full_env = {**env, **settings, **extra}
    with grpc_service("classifier_svc", "VISION_CLASSIFIER_PORT", full_env, log_dir) as service:
        yield service


@contextlib.contextmanager
def in_process_classifier(settings: Mapping[str, str]) -> Iterator[Service]:
    """classifier_svc's server inside this process (it then shares the GIL with the clients)."""
    from classifier_svc.config import ClassifierSettings
    from classifier_svc.server import create_classifier_server

    with patched_environ(settings):
        overrides: dict[str, Any] = {"port": 0}  # the rest from the environment set just above
        server, engine = create_classifier_server(ClassifierSettings(**overrides))

    def stop() -> None:
        server.stop(grace=None).wait()
        engine.close()

    try:
        yield Service("classifier_svc", f"127.0.0.1:{server.port}", os.getpid(), stop)
    finally:
        stop()


def grpc_calls(address: str, images: list[bytes], n: int) -> tuple[list[Call], Callable[[], None]]:
    """One channel (own connection) per client; client i sends image i mod len(images), top_k=5."""
    channels = grpc_channels(address, n)

    def make(i: int) -> Call:
        stub = classifier_pb2_grpc.ClassifierStub(channels[i])
        request = classifier_pb2.ClassifyRequest(image=images[i % len(images)], top_k=5)

        def call() -> dict[str, float]:
            return timing_fields(stub.Classify(request, timeout=RPC_TIMEOUT_S).timing)

        return call

    def close() -> None:
        for channel in channels:
            channel.close()

    return [make(i) for i in range(n)], close


# The gateway's timing_ms names -> the gRPC timing field names.
HTTP_TIMING = {
    "decode": "decode_ms",
    "queue": "queue_ms",
    "inference": "inference_ms",
    "server_total": "total_ms",
    "batch_size": "batch_size",
}


def multipart_body(data: bytes) -> tuple[bytes, dict[str, str]]:
    """A ``multipart/form-data`` body with ``data`` as the ``file`` field, and its headers."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def http_calls(base_url: str, images: list[bytes], n: int) -> tuple[list[Call], Callable[[], None]]:
    """One httpx.Client (keep-alive connection) per client; the multipart body is built once per client,
    so the load generator spends as little of the shared CPU as it can."""
    clients = [httpx.Client(base_url=base_url, timeout=RPC_TIMEOUT_S) for _ in range(n)]

    def make(i: int) -> Call:
        client = clients[i]
        body, headers = multipart_body(images[i % len(images)])

        def call() -> dict[str, float]:
            response = client.post("/predict", content=body, headers=headers)
            response.raise_for_status()
            timing = response.json()["timing_ms"]
            return {ours: float(timing[theirs]) for theirs, ours in HTTP_TIMING.items()}

        return call

    def close() -> None:
        for client in clients:
            client.close()

    return [make(i) for i in range(n)], close


def bare_calls(model: LoadedClassifier, images: list[bytes], n: int) -> list[Call]:
    """What a hand-rolled app does per request: decode + preprocess + batch-1 forward, in its own thread."""

    def make(i: int) -> Call:
        data = images[i % len(images)]

        def call() -> None:
            model.predict(model.preprocessing(decode_image(data)).unsqueeze(0))

        return call

    return [make(i) for i in range(n)]
