"""Calls spread over every replica: three classifier_svc processes behind one gateway target share the
requests (round_robin over the target's addresses), and the others carry on when one of them stops.

A Kubernetes Service balances connections, not calls: with one long-lived connection per gateway and
service, extra replicas would idle. The gateway's targets accept any gRPC target (here a list of three
addresses; in a cluster ``dns:///`` over a headless Service) and round_robin sends each call to the next
ready address; the servers' max connection age makes clients resolve again, so new replicas get traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from gateway.main import create_app
from tests.conftest import LiveServer, publish_random_model
from tests.reliability.mesh import free_port, wait_until
from tests.support.prometheus import scrape, value
from vision.models.store import ModelStore

REPLICAS = 3
REQUESTS = 300


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[subprocess.Popen[bytes], int, int]]]:
    root = tmp_path_factory.mktemp("replicas")
    store = ModelStore(root / "models")
    publish_random_model(store, name="smallcnn", arch="smallcnn", classes=["cat", "dog"])
    started = []
    for _ in range(REPLICAS):
        port, metrics = free_port(), free_port()
        env = {
            **os.environ,
            "VISION_MODEL_DIR": str(store.root),
            "VISION_CLASSIFIER_PORT": str(port),
            "VISION_CLASSIFIER_METRICS_PORT": str(metrics),
            "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
            "VISION_CLASSIFIER_MAX_WORKERS": "8",
            "VISION_TORCH_THREADS": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "classifier_svc"], env=env, stderr=subprocess.DEVNULL
        )
        started.append((process, port, metrics))
    try:
        for _process, port, _ in started:
            assert wait_until(lambda port=port: serving(port), 120, 0.3), f"replica on {port} did not start"
        yield started
    finally:
        for process, _, _ in started:
            process.kill()
            process.wait(10)


def classified(replica: tuple[subprocess.Popen[bytes], int, int]) -> float:
    return value(scrape(replica[2]), "grpc_server_handled_total", grpc_method="Classify", grpc_code="OK")


def test_three_replicas_share_the_calls_and_two_carry_on_when_one_stops(
    replicas: list[tuple[subprocess.Popen[bytes], int, int]], bus_jpeg: bytes
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port, _ in replicas)
    settings = GatewaySettings(classifier_addr=target)
    photo = {"file": ("bus.jpg", bus_jpeg, "image/jpeg")}
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        statuses = [client.post("/predict", files=photo).status_code for _ in range(REQUESTS)]
        assert statuses == [200] * REQUESTS
        shares = [classified(replica) / REQUESTS for replica in replicas]
        print(
            f"\n[figures] {REQUESTS} calls over {REPLICAS} replicas: shares {[round(s, 3) for s in shares]}"
        )
        assert sum(shares) == pytest.approx(1.0)
        assert min(shares) >= 0.2, shares

        stopped, *others = replicas
        before = [classified(replica) for replica in others]
        stopped[0].send_signal(signal.SIGTERM)  # drains in-flight calls, then exits
        assert stopped[0].wait(30) == 0
        after_stop = [client.post("/predict", files=photo).status_code for _ in range(60)]
        assert after_stop == [200] * 60
        gained = [classified(replica) - was for replica, was in zip(others, before, strict=True)]
        assert sum(gained) == 60 and min(gained) >= 12, gained  # both remaining replicas take calls


def test_a_dns_target_is_resolved_by_the_gateway(
    replicas: list[tuple[subprocess.Popen[bytes], int, int]], bus_jpeg: bytes
) -> None:
    """``dns:///name:port``, as for a headless Service: every address of the name is a backend."""
    alive = [replica for replica in replicas if replica[0].poll() is None]
    _, port, _ = alive[0]
    settings = GatewaySettings(classifier_addr=f"dns:///localhost:{port}")
    with LiveServer(create_app(settings)) as live:
        reply = httpx.post(
            f"{live.url}/predict", files={"file": ("bus.jpg", bus_jpeg, "image/jpeg")}, timeout=30
        )
    assert reply.status_code == 200, reply.text
