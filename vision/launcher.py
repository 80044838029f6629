"""`vision run`: every installed service plus the gateway, on this machine, as child processes.

Which services exist is data: the ``vision.services`` entry points (pyproject.toml) name each service's
settings class, and its port comes from those settings (VISION_CLASSIFIER_PORT=50051 and so on, the same
variables the service itself reads). The gateway (the entry point named ``gateway``) starts last, told each
service's address. Ctrl-C (or SIGTERM) stops all of them gracefully; if one dies, the rest are stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.plugins import SERVICES_GROUP, load_group

GATEWAY = "gateway"


class LauncherSettings(BaseSettings):
    """`vision run`'s own settings (VISION_HOST, VISION_RUN_GRACE_SECONDS)."""

    model_config = SettingsConfigDict(env_prefix="VISION_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where every started process listens.")
    run_grace_seconds: float = Field(25.0, gt=0, description="How long children get to stop on Ctrl-C.")


@dataclass(frozen=True)
class Service:
    """A startable process: ``python -m <module>``, configured by variables starting ``env_prefix``."""

    name: str
    module: str
    env_prefix: str
    port: int


def installed_services() -> list[Service]:
    """Every service whose package is installed, from its ``vision.services`` entry point."""
    services = []
    for plugin in load_group(SERVICES_GROUP):
        settings = plugin.value()
        module = plugin.target.split(":", 1)[0].split(".", 1)[0]
        prefix = str(settings.model_config.get("env_prefix", ""))
        services.append(Service(plugin.name, module, prefix, int(settings.port)))
    return services


def _start(service: Service, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", service.module], env=env)


def run() -> int:
    """Start everything, wait until interrupted or a child exits, then stop all. Returns an exit status."""
    settings = LauncherSettings()
    services = installed_services()
    gateway = next((s for s in services if s.name == GATEWAY), None)
    if gateway is None:
        print("[vision] the gateway is not installed: pip install 'vision-mesh[gateway]'", flush=True)
        return 1
    env = dict(os.environ)
    running: list[tuple[Service, subprocess.Popen[bytes]]] = []
    for service in (s for s in services if s is not gateway):
        host = env.setdefault(f"{service.env_prefix}HOST", settings.host)
        env[f"{gateway.env_prefix}{service.name.upper()}_ADDR"] = f"127.0.0.1:{service.port}"
        print(f"[vision] {service.name:<10} gRPC on {host}:{service.port}", flush=True)
        running.append((service, _start(service, env)))
    host = env.setdefault(f"{gateway.env_prefix}HOST", settings.host)
    print(
        f"[vision] {gateway.name:<10} HTTP on http://{host}:{gateway.port}/ (API docs at /docs)",
        flush=True,
    )
    running.append((gateway, _start(gateway, env)))
    return _supervise(running, settings.run_grace_seconds)


def _supervise(running: list[tuple[Service, subprocess.Popen[bytes]]], grace_s: float) -> int:
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
