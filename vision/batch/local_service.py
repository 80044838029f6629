"""`vision detect --local` and `vision explain --local`: the service itself (detector_svc, explain_svc),
started for the run as a child process on a free loopback port over ``--model-dir``, then called like a
remote one. The answers are the service's by construction, and `vision` imports no service: what to start
is found through the services' ``vision.services`` entry points, as `vision run` does.

The child runs in a session of its own, so a Ctrl-C in the terminal reaches the command (which stops
cleanly) and not the service in the middle of a call; the child is stopped when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vision.batch.settings import BatchSettings
from vision.errors import InvalidArgument, VisionError

POLL_S = 0.2
STOP_GRACE_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def local_service(name: str, model_dir: Path, device: str) -> Iterator[str]:
    """Start service ``name`` (detector, explain) over ``model_dir`` on ``device``; yield its address."""
    from vision.launcher import installed_services

    service = next((s for s in installed_services() if s.name == name), None)
    if service is None:
        raise InvalidArgument(f"--local needs {name}_svc installed here: pip install 'vision-mesh[{name}]'")
    port = _free_port()
    prefix = service.env_prefix
    env = {
        **os.environ, "VISION_MODEL_DIR": str(model_dir), "YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE", "1"),
        f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port), f"{prefix}METRICS_PORT": "0",
        f"{prefix}HEALTH_PORT": "0", f"{prefix}DEVICE": device,
    }  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + BatchSettings().local_start_timeout_s
    with tempfile.NamedTemporaryFile(prefix=f"vision-{name}-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        proc = subprocess.Popen(
            [sys.executable, "-m", service.module], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        print(f"started {service.module} on {address} for this run (log: {log_path})", file=sys.stderr)
        while not _serving(address):
            if proc.poll() is not None:
                raise VisionError(f"{service.module} exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise VisionError(f"{service.module} did not start in time (see {log_path})")
            time.sleep(POLL_S)
        yield address
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log_path.unlink(missing_ok=True)
