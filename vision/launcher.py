"""`vision run`: every service that exists plus the gateway, on this machine, as child processes.

Ports come from the usual environment variables (VISION_CLASSIFIER_PORT=50051, VISION_EXPLAIN_PORT=50052,
VISION_DETECTOR_PORT=50053, VISION_TRAINER_PORT=50054, VISION_GATEWAY_PORT=8000). Ctrl-C (or SIGTERM)
stops all of them gracefully; if one dies, the rest are stopped too.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    env_prefix: str
    default_port: int

    def port(self) -> int:
        return int(os.environ.get(f"{self.env_prefix}PORT", self.default_port))

    def available(self) -> bool:
        return importlib.util.find_spec(f"{self.module}.__main__") is not None


GRPC_SERVICES = (
    Service("classifier", "classifier_svc", "VISION_CLASSIFIER_", 50051),
    Service("explain", "explain_svc", "VISION_EXPLAIN_", 50052),
    Service("detector", "detector_svc", "VISION_DETECTOR_", 50053),
    Service("trainer", "trainer_svc", "VISION_TRAINER_", 50054),
)
GATEWAY = Service("gateway", "gateway", "VISION_GATEWAY_", 8000)


def _start(service: Service, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", service.module], env=env)


def run(grace_s: float = 25.0) -> int:
    """Start everything, wait until interrupted or a child exits, then stop all. Returns an exit status."""
    host = os.environ.get("VISION_HOST", "127.0.0.1")
    env = dict(os.environ)
    running: list[tuple[Service, subprocess.Popen[bytes]]] = []
    for service in (s for s in GRPC_SERVICES if s.available()):
        env[f"{service.env_prefix}HOST"] = env.get(f"{service.env_prefix}HOST", host)
        env[f"VISION_GATEWAY_{service.name.upper()}_ADDR"] = f"127.0.0.1:{service.port()}"
        print(f"[vision] {service.name:<10} gRPC on {host}:{service.port()}", flush=True)
        running.append((service, _start(service, env)))
    env.setdefault("VISION_GATEWAY_HOST", host)
    print(
        f"[vision] {'gateway':<10} HTTP on http://{env['VISION_GATEWAY_HOST']}:{GATEWAY.port()}/ "
        f"(API docs at /docs)",
        flush=True,
    )
    running.append((GATEWAY, _start(GATEWAY, env)))

    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    status = 0
    while not stop_requested:
        exited = [(s, p) for s, p in running if p.poll() is not None]
        if exited:
            service, proc = exited[0]
            print(
                f"[vision] {service.name} exited with status {proc.returncode}; stopping the rest", flush=True
            )
            status = proc.returncode or 1
            break
        time.sleep(0.2)
    print("[vision] stopping...", flush=True)
    for _, proc in reversed(running):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for service, proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[vision] {service.name} did not stop in time; killing it", flush=True)
            proc.kill()
            proc.wait()
    print("[vision] all stopped", flush=True)
    return status
