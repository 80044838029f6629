"""Robustness of the model services (issue 11): calls without a deadline, health under saturation, bounded
decoding, bounded annotated images, PNG colour keys. Real servers on loopback, real images, real models."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from detector_svc.checkpoints import import_yolo_checkpoint
from detector_svc.model import DetectorEngine
from explain_svc.config import ExplainSettings
from explain_svc.server import create_explain_server
from tests.conftest import encode, publish_random_model, start_classifier
from tests.support.detector import make_yolo_checkpoint, reply_rows, start_detector
from vision.image.decode import decode_image
from vision.models.store import ModelStore
from vision.rpc.admission import busy_message
from vision.rpc.server import GrpcServer, create_server
from vision.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    detector_pb2,
    detector_pb2_grpc,
    explainer_pb2,
    explainer_pb2_grpc,
)

SERVING = health_pb2.HealthCheckResponse.SERVING


def png_bomb(width: int = 7300, height: int = 5475) -> bytes:
    """A ~115 KiB PNG of ``width`` x ``height`` black RGB pixels (~40 MP by default, under the limit)."""
    row = b"\x00" * (1 + width * 3)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def check_health(port: int, timeout: float = 1.0) -> tuple[int, float]:
    """Health.Check's status on a fresh channel, and how long the answer took (seconds)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        start = time.perf_counter()
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return reply.status, time.perf_counter() - start


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def classifier_server(store: ModelStore) -> Iterator[Callable[..., tuple[GrpcServer, Any]]]:
    """Start classifiers with given settings over a seeded resnet18; all stopped at the end."""
    publish_random_model(store)
    started: list[tuple[GrpcServer, Any]] = []

    def start(**overrides: object) -> tuple[GrpcServer, Any]:
        started.append(start_classifier(store, **overrides))
        return started[-1]

    yield start
    for server, engine in started:
        server.stop(0).wait()
        engine.close()


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcServer, DetectorEngine]]:
    """A real detector_svc serving a YOLO11n (calibrated random weights), annotated side capped at 1280."""
    checkpoint = make_yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolo11n.pt")
    store = ModelStore(tmp_path_factory.mktemp("store") / "models")
    import_yolo_checkpoint(store, checkpoint, "yolo11n")
    server, engine = start_detector(store, max_annotated_side=1280)
    yield server, engine
    server.stop(0).wait()
    engine.close()


# -- 1. calls without a deadline -----------------------------------------------------------------------------
def test_classify_without_a_client_deadline_succeeds(
    classifier_server: Callable[..., tuple[GrpcServer, Any]], bus_jpeg: bytes
) -> None:
    server, _ = classifier_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(image=bus_jpeg, top_k=3)  # no timeout=: no deadline at all
        )
    assert len(reply.classes) == 3 and reply.model.name == "resnet18"


def test_explain_without_a_client_deadline_succeeds(store: ModelStore, bus_jpeg: bytes) -> None:
    publish_random_model(store)
    server, engine = create_explain_server(ExplainSettings(port=0, model_dir=store.root, poll_interval_s=0.2))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = explainer_pb2_grpc.ExplainerStub(channel).Explain(
                explainer_pb2.ExplainRequest(image=bus_jpeg)
            )
        assert reply.overlay_jpeg.startswith(b"\xff\xd8") and reply.model.name == "resnet18"
    finally:
        server.stop(0).wait()
        engine.close()


def test_detect_without_a_client_deadline_succeeds(
    detector: tuple[GrpcServer, DetectorEngine], bus_jpeg: bytes
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{detector[0].port}") as channel:
        reply = detector_pb2_grpc.DetectorStub(channel).Detect(detector_pb2.DetectRequest(image=bus_jpeg))
    assert reply.boxes and reply.model.name == "yolo11n"


def test_a_call_waits_no_longer_than_the_servers_max_deadline(
    classifier_server: Callable[..., tuple[GrpcServer, Any]], bus_jpeg: bytes
) -> None:
    """A client deadline of 60 s is cut to max_deadline_s: with every decode slot held, the call is refused
    as overloaded after that long, naming the slots."""
    server, engine = classifier_server(max_concurrent_decodes=1, max_deadline_s=0.5)
    with engine.decode_slot(None), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as caught:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(image=bus_jpeg), timeout=60
            )
        elapsed = time.perf_counter() - start
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "decoding slots" in (caught.value.details() or "")
    assert 0.4 < elapsed < 5


# -- 2. health answers under any load ------------------------------------------------------------------------
def test_health_answers_within_a_second_while_every_handler_thread_is_busy(
    classifier_server: Callable[..., tuple[GrpcServer, Any]], bus_jpeg: bytes
) -> None:
    """4 handler threads, each held by a Classify waiting for the one decode slot (held here): Health.Check
    still answers at once, a fifth Classify is refused at once with RESOURCE_EXHAUSTED, and the held calls
    all succeed once the slot is free."""
    server, engine = classifier_server(max_workers=4, max_concurrent_decodes=1)
    request = classifier_pb2.ClassifyRequest(image=bus_jpeg)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, ThreadPoolExecutor(4) as pool:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        stub.Classify(request, timeout=30)  # warm: the model answers
        with engine.decode_slot(None):
            held = [pool.submit(stub.Classify, request, timeout=30) for _ in range(4)]
            time.sleep(0.5)  # the four calls reach the server and wait for the slot
            assert not any(f.done() for f in held)
            latencies = []
            for _ in range(5):
                status, latency = check_health(server.port)
                assert status == SERVING
                latencies.append(latency)
            start = time.perf_counter()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Classify(request, timeout=10)
            refused_after = time.perf_counter() - start
        replies = [f.result(timeout=30) for f in held]
    assert max(latencies) < 1.0, latencies
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == busy_message(4)
    assert ("vision-error-kind", "overloaded") in list(caught.value.trailing_metadata() or ())
    assert refused_after < 1.0
    assert all(r.classes for r in replies)
    print(f"health latency while saturated: max {max(latencies) * 1000:.1f} ms")


def test_open_streams_count_against_the_limit_and_health_still_answers() -> None:
    """A server like the trainer's (create_server, any streaming method): two open streams fill a limit of
    two; health answers at once; a third call is refused; once a stream closes, calls are admitted again."""
    server = create_server(
        "127.0.0.1:0", lambda _s: ("vision.v1.Test",), max_message_bytes=1 << 20, max_workers=2
    )
    server.set_serving()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            # Health.Watch streams until cancelled: it holds a handler thread like WatchJob or CreateJob.
            streams = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
            for stream in streams:
                assert next(stream).status == SERVING
            status, latency = check_health(server.port)
            assert status == SERVING and latency < 1.0
            with pytest.raises(grpc.RpcError) as caught:
                next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            streams[0].cancel()
            wait_until(lambda: _admitted(stub))
            streams[1].cancel()
    finally:
        server.stop(0).wait()


def _admitted(stub: health_pb2_grpc.HealthStub) -> bool:
    stream = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    try:
        return bool(next(stream).status == SERVING)
    except grpc.RpcError:
        return False
    finally:
        stream.cancel()


# -- 6. decoding is bounded ----------------------------------------------------------------------------------
MEASURE_BOMBS = r"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import grpc
from classifier_svc.config import ClassifierSettings
from classifier_svc.server import create_classifier_server
from vision.rpc.service import return_freed_memory_promptly
from vision.v1 import classifier_pb2, classifier_pb2_grpc

assert return_freed_memory_promptly()  # as python -m classifier_svc does


def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024


def hwm_mib():
    return status_mib("VmHWM:")


def rss_mib():
    return status_mib("VmRSS:")

settings = ClassifierSettings(port=0, model_dir=sys.argv[1], fetch_pretrained=False, max_concurrent_decodes=1)
server, engine = create_classifier_server(settings)
bomb = open(sys.argv[2], "rb").read()
with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    small = open(sys.argv[3], "rb").read()
    stub.Classify(classifier_pb2.ClassifyRequest(image=small), timeout=60)
    before = hwm_mib()
    def one(_):
        return stub.Classify(classifier_pb2.ClassifyRequest(image=bomb), timeout=120).model.name
    with ThreadPoolExecutor(8) as pool:
        names = list(pool.map(one, range(8)))
    peak = hwm_mib()
    time.sleep(1)
    print(names.count("resnet18"), before, peak, rss_mib())
server.stop(0).wait()
engine.close()
"""


def test_eight_concurrent_png_bombs_are_decoded_one_at_a_time_and_peak_memory_stays_bounded(
    store: ModelStore, tmp_path: Path, bus_jpeg: bytes
) -> None:
    """With max_concurrent_decodes=1, 8 concurrent 40 MP PNG bombs (115 KiB each, ~120 MB decoded) all get
    an answer; the classifier's peak RSS grows by about one decode (unbounded: ~2 GB) and returns after."""
    publish_random_model(store)
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    (tmp_path / "bus.jpg").write_bytes(bus_jpeg)
    env = {**os.environ, "VISION_LOG_LEVEL": "WARNING"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE_BOMBS,
            str(store.root),
            str(tmp_path / "bomb.png"),
            str(tmp_path / "bus.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answered, before, peak, after = (int(v) for v in run.stdout.split()[-4:])
    print(f"RSS {before} MiB, peak {peak} MiB under 8 concurrent 40 MP PNG bombs, {after} MiB after")
    assert answered == 8
    assert peak - before < 400, (before, peak)
    assert after - before < 200, (before, after)  # the decoded pixels went back to the system


# -- 7. annotated images are bounded -------------------------------------------------------------------------
def test_a_large_photo_gets_its_boxes_and_an_annotated_png_capped_to_the_max_side(
    detector: tuple[GrpcServer, DetectorEngine], bus_jpeg: bytes
) -> None:
    """A 4800x3600 photo, mostly noise (a full-size PNG of it is ~45 MB, over the 21 MiB message limit)
    gets a 200 with an annotated PNG whose longer side is the configured 1280, and the boxes of the
    un-annotated call."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (3600, 4800, 3), dtype=np.uint8))
    big.paste(Image.open(io.BytesIO(bus_jpeg)).resize((1620, 2160)), (1000, 600))
    photo = encode(big, "JPEG", quality=75)  # ~9 MiB: accepted
    assert len(photo) < 20 * 1024 * 1024
    with grpc.insecure_channel(
        f"127.0.0.1:{detector[0].port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = detector_pb2_grpc.DetectorStub(channel)
        annotated = stub.Detect(detector_pb2.DetectRequest(image=photo, annotate=True), timeout=120)
        plain = stub.Detect(detector_pb2.DetectRequest(image=photo), timeout=120)
    drawn = Image.open(io.BytesIO(annotated.annotated_png))
    assert drawn.size == (1280, 960)
    assert (annotated.image_width, annotated.image_height) == (4800, 3600)
    assert reply_rows(annotated) == reply_rows(plain)
    assert annotated.ByteSize() < 1280 * 960 * 3 * 1.2


def test_a_photo_within_the_max_side_is_annotated_at_its_own_size(
    detector: tuple[GrpcServer, DetectorEngine], zidane_jpeg: bytes
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{detector[0].port}") as channel:
        reply = detector_pb2_grpc.DetectorStub(channel).Detect(
            detector_pb2.DetectRequest(image=zidane_jpeg, annotate=True), timeout=60
        )
    assert Image.open(io.BytesIO(reply.annotated_png)).size == (1280, 720)


def test_the_annotated_side_is_lowered_so_the_worst_case_reply_fits_the_message_limit() -> None:
    from detector_svc.model import annotated_side_limit

    assert annotated_side_limit(1920, 21 * 1024 * 1024, 1000) == 1920
    side = annotated_side_limit(4096, 5 * 1024 * 1024, 1000)
    assert side < 4096
    worst = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    from vision.image.png import encode_png

    assert len(encode_png(worst)) + 64 * 1024 + 128 * 1000 <= 5 * 1024 * 1024


# -- 11. PNG colour keys -------------------------------------------------------------------------------------
def keyed_png(mode: str) -> tuple[bytes, np.ndarray]:
    """A PNG whose colour key (tRNS) marks the left half transparent, and the RGB a viewer shows."""
    shown = np.zeros((8, 8, 3), dtype=np.uint8)
    key: int | tuple[int, int, int]
    if mode == "RGB":
        pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        pixels[:, :4] = (10, 20, 30)
        pixels[:, 4:] = (200, 100, 50)
        image, key = Image.fromarray(pixels), (10, 20, 30)
        shown[:, 4:] = (200, 100, 50)
    elif mode == "L":
        pixels = np.full((8, 8), 7, dtype=np.uint8)
        pixels[:, 4:] = 128
        image, key = Image.fromarray(pixels), 7
        shown[:, 4:] = 128
    else:  # 16-bit grayscale: the key is matched on 16-bit values (300 and 310 share their high byte)
        pixels = np.full((8, 8), 300, dtype=np.uint16)
        pixels[:, 4:] = 310
        image, key = Image.fromarray(pixels), 300
        shown[:, 4:] = 1
    shown[:, :4] = 255
    return encode(image, "PNG", transparency=key), shown


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_png_colour_key_transparency_is_flattened_to_white(mode: str) -> None:
    data, shown = keyed_png(mode)
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), shown)


def test_a_colour_keyed_png_classifies_like_the_same_picture_on_white(
    classifier_server: Callable[..., tuple[GrpcServer, Any]], astronaut: Image.Image
) -> None:
    pixels = np.asarray(astronaut).copy()
    pixels[:200, :200] = (1, 2, 3)  # the key colour: transparent
    keyed = encode(Image.fromarray(pixels), "PNG", transparency=(1, 2, 3))
    pixels[:200, :200] = 255
    on_white = encode(Image.fromarray(pixels), "PNG")
    server, _ = classifier_server()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        a, b = (
            stub.Classify(classifier_pb2.ClassifyRequest(image=img, top_k=10), timeout=30)
            for img in (keyed, on_white)
        )
    assert [(c.class_id, c.score) for c in a.classes] == [(c.class_id, c.score) for c in b.classes]
