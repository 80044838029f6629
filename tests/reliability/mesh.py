"""A real `vision run` (the launcher and every service as child processes) on loopback ports, for the
reliability suite and the launcher test: its own model store and data directory, its output collected, its
children found through /proc, and the whole process group killed when it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

MODULES = {
    "classifier": "classifier_svc",
    "explain": "explain_svc",
    "detector": "detector_svc",
    "trainer": "trainer_svc",
    "gateway": "gateway",
}
GRPC_SERVICES = ("classifier", "explain", "detector", "trainer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def status_bytes(pid: int, key: str) -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status (``VmRSS``, ``VmHWM`` ...) in bytes, 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), 0 when it is gone."""
    return status_bytes(pid, "VmRSS")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


class VisionRun:
    """``python -m vision.cli run`` in a new session (so its whole process group can be killed)."""

    def __init__(self, root: Path, **extra_env: str) -> None:
        self.root = root
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "VISION_MODEL_DIR": str(root / "models"),
            "VISION_DATA_DIR": str(root / "data"),
            "VISION_GATEWAY_PORT": str(self.http_port),
            "VISION_CLASSIFIER_PORT": str(free_port()),
            "VISION_EXPLAIN_PORT": str(free_port()),
            "VISION_DETECTOR_PORT": str(free_port()),
            "VISION_TRAINER_PORT": str(free_port()),
            "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
            "VISION_DETECTOR_FETCH_DEFAULT": "false",
            "VISION_TRAINER_DEVICE": "cpu",
            "VISION_TRAINER_LOADER_WORKERS": "0",
            "VISION_TRAINER_PRETRAINED_URL": "http://127.0.0.1:9/offline.pth",  # nothing listens: offline
            "VISION_TRAINER_PRETRAINED_TIMEOUT_S": "2",
            "VISION_TRAINER_PROGRESS_INTERVAL_S": "0.5",
            "YOLO_OFFLINE": "1",
            **extra_env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> VisionRun:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vision.cli", "run"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        """Until GET /health says every service is SERVING (the first start imports torch five times)."""

        def healthy() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, "vision run exited:\n" + self.tail()
            try:
                return httpx.get(f"{self.url}/health", timeout=5).json().get("status") == "ok"
            except (httpx.HTTPError, ValueError):
                return False

        assert wait_until(healthy, timeout_s, 0.5), "the system did not come up:\n" + self.tail()

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C: SIGINT to the launcher only (as a terminal would, minus the children); its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(5)
        return status

    def kill_all(self) -> None:
        """Kill the launcher's whole process group (children included); for finally blocks."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> VisionRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    # -- looking inside -------------------------------------------------------------------------------------
    def child_pid(self, service: str) -> int | None:
        """The pid of the running ``python -m <service module>`` child of the launcher."""
        assert self.proc is not None
        module = MODULES[service]
        for pid in children_of(self.proc.pid):
            args = cmdline(pid)
            if "-m" in args and args[args.index("-m") + 1 : args.index("-m") + 2] == [module]:
                return pid
        return None

    def child_pids(self) -> dict[str, int]:
        return {name: pid for name in MODULES if (pid := self.child_pid(name)) is not None}

    def kill(self, service: str) -> int:
        """SIGKILL the service's process; its pid."""
        pid = self.child_pid(service)
        assert pid is not None, f"no {service} child:\n" + self.tail()
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, service: str, old_pid: int, timeout_s: float = 30.0) -> int:
        """Until a new process of ``service`` runs; its pid."""
        new: list[int] = []

        def restarted() -> bool:
            pid = self.child_pid(service)
            if pid is not None and pid != old_pid:
                new.append(pid)
                return True
            return False

        assert wait_until(restarted, timeout_s), f"{service} was not restarted:\n" + self.tail()
        return new[-1]

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


def figures(title: str, **values: Any) -> None:
    """Print a test's figures on one line (`pytest -s` shows them) for the lead to quote."""
    print(f"\n[figures] {title}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)
