"""The load generator: N client threads (or one loop in this thread), latency percentiles, throughput.

A *call* is one request of one client; it returns the server's timing fields (``{name: value}``) or None.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from benchmarks.harness.cpu import CpuMeter, wait_for_idle

Call = Callable[[], dict[str, float] | None]
RPC_TIMEOUT_S = 120.0
# The ``timing`` message of ClassifyResponse and ExplainResponse.
TIMING_KEYS = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")


def timing_fields(timing: Any, keys: Sequence[str] = TIMING_KEYS) -> dict[str, float]:
    """``{key: float(timing.key)}`` of a response's timing message."""
    return {key: float(getattr(timing, key)) for key in keys}


def grpc_channels(address: str, n: int) -> list[grpc.Channel]:
    """``n`` channels to ``address``, each on its own connection (one per client thread)."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    return [grpc.insecure_channel(address, options=options) for _ in range(n)]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Result:
    """One measured row."""

    key: str
    label: str
    concurrency: int
    batch: str
    images: int
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    timings: list[dict[str, float]] = field(default_factory=list, repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)
    other_cores: float | None = None
    errors: int = 0
    first_error: str = ""
    note: str = ""

    @property
    def throughput(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def timing_mean(self, key: str) -> float | None:
        values = [t[key] for t in self.timings if key in t]
        return float(np.mean(values)) if values else None

    def cpu_ms_per_image(self, name: str) -> float | None:
        value = self.cpu_s.get(name)
        return None if value is None else value * 1000 / max(self.images, 1)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "label": self.label,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "images": self.images,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.throughput, 3),
            "latency_p50_ms": _round(self.percentile(50)),
            "latency_p99_ms": _round(self.percentile(99)),
            "latency_mean_ms": _round(float(np.mean(self.latencies_ms)) if self.latencies_ms else None),
            "errors": self.errors,
            "other_processes_cores": _round(self.other_cores),
            "note": self.note,
        }
        if self.first_error:
            out["first_error"] = self.first_error
        if self.cpu_s:
            out["cpu_s"] = {k: round(v, 3) for k, v in self.cpu_s.items()}
            out["cpu_ms_per_image"] = {
                k: round(v * 1000 / max(self.images, 1), 2) for k, v in self.cpu_s.items()
            }
        if self.timings:
            keys = self.timings[0]
            out["server_timing_mean"] = {
                k: round(float(np.mean([t[k] for t in self.timings])), 3) for k in keys
            }
            out["server_timing_p50"] = {
                k: round(float(np.median([t[k] for t in self.timings])), 3) for k in keys
            }
        return out


def run_load(
    key: str,
    label: str,
    calls: Sequence[Call],
    *,
    seconds: float,
    requests: int = 0,
    warmup_s: float = 0.0,
    pids: dict[str, int] | None = None,
    idle_wait_s: float = 0.0,
    batch: str = "1 per call",
    note: str = "",
) -> Result:
    """Run ``calls`` (one per client thread) concurrently: ``warmup_s`` of warm-up, then ``requests`` calls
    in all (when > 0) or for ``seconds``. CPU time is measured for ``pids`` (name: pid) during the phase."""
    if idle_wait_s > 0:
        wait_for_idle(idle_wait_s)
    n = len(calls)
    lock = threading.Lock()
    state: dict[str, float] = {"issued": 0}
    meter = CpuMeter(pids or {})
    latencies: list[list[float]] = [[] for _ in range(n)]
    timings: list[list[dict[str, float]]] = [[] for _ in range(n)]
    finished = [0.0] * n
    errors: list[str] = []

    def begin_measuring() -> None:  # runs once, in the last thread to reach the barrier
        meter.start()
        state["t0"] = time.perf_counter()
        state["deadline"] = state["t0"] + seconds

    warmed = threading.Barrier(n, action=begin_measuring)
    warm_until = time.perf_counter() + warmup_s

    def take_ticket() -> bool:
        if requests > 0:
            with lock:
                if state["issued"] >= requests:
                    return False
                state["issued"] += 1
                return True
        return time.perf_counter() < state["deadline"]

    def client(i: int) -> None:
        call = calls[i]
        try:
            while time.perf_counter() < warm_until:
                call()
        except Exception as exc:
            with lock:
                errors.append(f"warm-up: {exc!r}")
        warmed.wait()
        while take_ticket():
            start = time.perf_counter()
            try:
                timing = call()
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            latencies[i].append((time.perf_counter() - start) * 1000)
            if timing is not None:
                timings[i].append(timing)
        finished[i] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = max(finished) - state["t0"]
    cpu, other = meter.stop(wall)
    all_latencies = [x for per in latencies for x in per]
    return Result(
        key,
        label,
        n,
        batch,
        len(all_latencies),
        wall,
        all_latencies,
        [t for per in timings for t in per],
        cpu,
        other,
        len(errors),
        errors[0][:300] if errors else "",
        note,
    )


def run_loop(
    key: str,
    label: str,
    step: Callable[[], int],
    *,
    seconds: float,
    warmup_s: float,
    batch: str,
    idle_wait_s: float = 0.0,
    note: str = "",
) -> Result:
    """Call ``step`` (returns images done) in this thread: ``warmup_s`` of warm-up, then for ``seconds``.
    Latency is per call (a whole batch when ``step`` does one)."""
    if idle_wait_s > 0:
        wait_for_idle(idle_wait_s)
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        step()
    latencies: list[float] = []
    images = 0
    meter = CpuMeter({"bench (bare model)": os.getpid()})
    meter.start()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        start = time.perf_counter()
        images += step()
        now = time.perf_counter()
        latencies.append((now - start) * 1000)
        if now >= deadline:
            break
    wall = time.perf_counter() - t0
    cpu, other = meter.stop(wall)
    return Result(key, label, 1, batch, images, wall, latencies, cpu_s=cpu, other_cores=other, note=note)
