"""The service launcher: ``python -m <service>`` as a subprocess on a free port, ready when its gRPC health
check says SERVING (or, for the gateway, ``GET /health`` answers 200), stopped on exit."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with OpenMP/MKL limited to ``threads`` (torch's intra-op threads)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass
class Service:
    name: str
    address: str
    pid: int
    stop: Callable[[], None]
    log_path: Path | None = None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def grpc_serving(address: str) -> Callable[[], bool]:
    """A check: does the gRPC health service at ``address`` answer SERVING?"""

    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def http_healthy(base_url: str) -> Callable[[], bool]:
    """A check: does ``GET base_url/health`` answer 200?"""

    def check() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@contextlib.contextmanager
def subprocess_service(
    name: str, module: str, env: Mapping[str, str], address: str, log_dir: Path, ready: Callable[[], bool]
) -> Iterator[Service]:
    """``python -m module`` from the repository root, its output in ``log_dir/<name>.log``; yields once
    ``ready()`` is true, stops the process (terminate, then kill) when the block ends."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        service = Service(name, address, proc.pid, stop, log_path)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not ready():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{service.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} not ready after {STARTUP_TIMEOUT_S:.0f}s:\n{service.log_tail()}"
                    )
                time.sleep(0.2)
            yield service
        finally:
            stop()


@contextlib.contextmanager
def grpc_service(
    module: str, port_variable: str, env: Mapping[str, str], log_dir: Path, name: str = ""
) -> Iterator[Service]:
    """A gRPC service (``python -m module``) on a free port given in ``port_variable``; ready when SERVING."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    full_env = {**env, port_variable: str(port)}
    with subprocess_service(name or module, module, full_env, address, log_dir, grpc_serving(address)) as svc:
        yield svc


@contextlib.contextmanager
def gateway_service(env: Mapping[str, str], log_dir: Path) -> Iterator[Service]:
    """``python -m gateway`` on a free port; ``Service.address`` is its base URL; ready when /health is OK.

    Authentication stays off and the anonymous rate limit is lifted (unless ``env`` sets them): a benchmark
    measures the gateway's throughput, not its flood protection."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    full_env = {"VISION_AUTH_ANONYMOUS_RATE": "0", **env, "VISION_GATEWAY_PORT": str(port)}
    with subprocess_service("gateway", "gateway", full_env, base_url, log_dir, http_healthy(base_url)) as gw:
        yield gw


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (for a service run inside this process)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
