"""CPU accounting (Linux /proc): CPU seconds per process, load from other processes, waiting for idle."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads; Linux /proc), else None."""
    if pid == os.getpid():
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def system_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used so far (Linux /proc/stat), else None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, IndexError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_s: float, threshold_cores: float = 0.15, window_s: float = 2.0) -> float:
    """Wait (at most ``max_s``) until the whole machine uses under ``threshold_cores`` for ``window_s``;
    call it between phases, when our own processes are idle. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        before = system_busy_seconds()
        if before is None:
            break
        time.sleep(window_s)
        after = system_busy_seconds()
        if after is None or (after - before) / window_s < threshold_cores:
            break
    return time.monotonic() - start


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"2.1 1.8 1.2"``."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class CpuMeter:
    """CPU seconds used by our processes during a phase, and by everything else on the machine (cores)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.busy_before: float | None = None

    def start(self) -> None:
        self.before = {}
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                self.before[name] = value
        self.busy_before = system_busy_seconds()

    def stop(self, wall_s: float) -> tuple[dict[str, float], float | None]:
        """(CPU seconds per process name, cores used by other processes on average over ``wall_s``)."""
        busy_after = system_busy_seconds()
        used: dict[str, float] = {}
        for name, before in self.before.items():
            after = cpu_seconds(self.pids[name])
            if after is not None:
                used[name] = after - before
        other = None
        if busy_after is not None and self.busy_before is not None and wall_s > 0:
            other = max(0.0, (busy_after - self.busy_before - sum(used.values())) / wall_s)
        return used, other
