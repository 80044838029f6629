"""`vision run`: every installed service plus the gateway, on this machine, as child processes.

Which services exist is data: the ``vision.services`` entry points (pyproject.toml) name each service's
settings class, and its port comes from those settings (VISION_CLASSIFIER_PORT=50051 and so on, the same
variables the service itself reads). The gateway (the entry point named ``gateway``) starts last, told each
service's address.

Supervision is Kubernetes' ``restartPolicy: Always``: a child that exits when it was not asked to (killed,
out of memory, crashed) is started again after a back-off that begins at 1 s and doubles up to 30 s; a child
that stayed up for a minute starts again from 1 s. Meanwhile the others keep running (the gateway answers
503 for a service that is down). Ctrl-C (or SIGTERM) stops all of them gracefully, and nothing is restarted
once stopping has begun.

Transport security is the children's own (``VISION_TLS_*``, inherited by all of them): the launcher makes no
gRPC calls, and only checks those settings once before starting anything, so a wrong certificate path is
one clear message instead of every child failing and being restarted forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.plugins import SERVICES_GROUP, load_group
from vision.security.tls import TlsSettings, server_credentials

GATEWAY = "gateway"
POLL_S = 0.2


class LauncherSettings(BaseSettings):
    """`vision run`'s own settings (VISION_HOST, VISION_RUN_*)."""

    model_config = SettingsConfigDict(env_prefix="VISION_", extra="ignore")

    host: str = Field("127.0.0.1", description="Where every started process listens.")
    run_grace_seconds: float = Field(25.0, gt=0, description="How long children get to stop on Ctrl-C.")
    run_restart_initial_backoff_s: float = Field(
        1.0, gt=0, description="Wait before restarting a child that exited unexpectedly (doubled each time)."
    )
    run_restart_max_backoff_s: float = Field(30.0, gt=0, description="Longest wait before a restart.")
    run_restart_reset_after_s: float = Field(
        60.0, gt=0, description="A child up this long starts again from the initial back-off when it dies."
    )


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


@dataclass
class Child:
    """One supervised service: its current process (None while waiting to restart) and its back-off."""

    service: Service
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", self.service.module], env=self.env)
        self.started_at = time.monotonic()
        self.restart_at = None
        print(f"[vision] {self.service.name} started (pid {self.proc.pid})", flush=True)


def run() -> int:
    """Start everything, keep it running (restarting what dies) until interrupted, then stop all."""
    settings = LauncherSettings()
    services = installed_services()
    gateway = next((s for s in services if s.name == GATEWAY), None)
    if gateway is None:
        print("[vision] the gateway is not installed: pip install 'vision-mesh[gateway]'", flush=True)
        return 1
    transport = check_transport_security()
    if transport is None:
        return 1
    print(f"[vision] gRPC between the processes: {transport}", flush=True)
    env = dict(os.environ)
    children: list[Child] = []
    for service in (s for s in services if s is not gateway):
        host = env.setdefault(f"{service.env_prefix}HOST", settings.host)
        env[f"{gateway.env_prefix}{service.name.upper()}_ADDR"] = f"127.0.0.1:{service.port}"
        print(f"[vision] {service.name:<10} gRPC on {host}:{service.port}", flush=True)
        children.append(Child(service, env))
    host = env.setdefault(f"{gateway.env_prefix}HOST", settings.host)
    print(
        f"[vision] {gateway.name:<10} HTTP on http://{host}:{gateway.port}/ (API docs at /docs)",
        flush=True,
    )
    children.append(Child(gateway, env))
    return Supervisor(children, settings).run()


def check_transport_security() -> str | None:
    """The services' transport ("plaintext", "TLS" or "mutual TLS") as ``VISION_TLS_*`` configure it, or
    None (the reason printed) when a service could not start with those settings."""
    try:
        tls = TlsSettings()
        server_credentials(tls)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        for error in errors:
            print(f"[vision] TLS settings: {error['msg'].removeprefix('Value error, ')}", flush=True)
        return None
    return tls.mode


class Supervisor:
    """Starts the children, restarts those that exit with back-off, stops them all on SIGINT/SIGTERM."""

    def __init__(self, children: list[Child], settings: LauncherSettings) -> None:
        self.children = children
        self.settings = settings
        self.stop_requested = False

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        for child in self.children:
            if self.stop_requested:
                break
            child.start()
        while not self.stop_requested:
            self.tick(time.monotonic())
            time.sleep(POLL_S)
        self.stop_all()
        return 0

    def tick(self, now: float) -> None:
        """One supervision step: notice exits (scheduling restarts) and start what is due."""
        for child in self.children:
            if self.stop_requested:
                return
            if child.proc is not None and child.proc.poll() is not None:
                self._schedule_restart(child, now)
            elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                child.start()

    def _schedule_restart(self, child: Child, now: float) -> None:
        assert child.proc is not None
        status = child.proc.returncode
        s = self.settings
        if child.backoff_s == 0 or now - child.started_at >= s.run_restart_reset_after_s:
            child.backoff_s = s.run_restart_initial_backoff_s
        delay = min(child.backoff_s, s.run_restart_max_backoff_s)
        child.backoff_s = min(delay * 2, s.run_restart_max_backoff_s)
        child.proc = None
        child.restart_at = now + delay
        print(
            f"[vision] {child.service.name} exited with status {status}; restarting in {delay:g}s",
            flush=True,
        )

    def stop_all(self) -> None:
        print("[vision] stopping...", flush=True)
        running = [c for c in self.children if c.proc is not None]
        for child in reversed(running):  # the gateway first
            assert child.proc is not None
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.run_grace_seconds
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"[vision] {child.service.name} did not stop in time; killing it", flush=True)
                child.proc.kill()
                child.proc.wait()
        print("[vision] all stopped", flush=True)
