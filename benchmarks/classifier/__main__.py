#!/usr/bin/env python
"""classifier_svc and gateway throughput/latency against the bare model, in one run on one machine.

Prints a markdown report (and with ``--json OUT`` writes the numbers):

* bare model rows: the service's own model wrapper (``load_for_serving(...).predict``:
  same weights, device, fp16 + channels_last on CUDA, softmax and copy back to the CPU), no gRPC, no batcher:
  forward on preprocessed tensors at batch 1 and at the max batch size; decode + preprocess alone; decode +
  preprocess + forward at batch 1 in one thread; and the same with N threads, each on its own image (what a
  hand-rolled app would do: "bare at equal concurrency", measured before and after the services).
* classifier_svc (``python -m classifier_svc`` subprocess by default) under N concurrent gRPC clients.
* gateway (``python -m gateway`` subprocess in front of it) under N concurrent HTTP clients (POST /predict).
* the ratios service/bare and gateway/bare with their targets, and where the service's time goes (the
  ClassifyResponse.timing fields) and the CPU seconds each process used per request.

Every client sends a real JPEG (ultralytics' bus.jpg and zidane.jpg, scikit-image's astronaut), client i
the image i mod 3; the bare rows use the same images. The model is a seeded, randomly initialised network
with 1000 classes (speed does not depend on the weights), published to a temporary model store.

    python benchmarks/classifier_bench.py                 # defaults: 8 clients, 15 s per load phase
    python benchmarks/classifier_bench.py --concurrency 32 --requests 2000 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ultralytics' photos are read from its package directory; nothing may reach the network.
os.environ.setdefault("YOLO_OFFLINE", "1")
# Importable as `python benchmarks/classifier_bench.py` from the repository root without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import httpx
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from vision.choices import ARCHITECTURES
from vision.image.decode import decode_image
from vision.models.architectures import build_model
from vision.models.devices import resolve_device
from vision.models.store import ModelMetadata, ModelStore, ModelVersion
from vision.models.weights import publish_state_dict
from vision.serving.classifier import LoadedClassifier, load_for_serving
from vision.v1 import classifier_pb2, classifier_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 1000
CPU_TARGETS = {"classifier_svc": 0.9, "gateway": 0.8}
GPU_TARGET_BATCHED = 0.8
STARTUP_TIMEOUT_S = 180.0
RPC_TIMEOUT_S = 120.0
TIMING_KEYS = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")

Call = Callable[[], dict[str, float] | None]


# -- inputs ----------------------------------------------------------------------------------------------
def test_images() -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of real photos: bus.jpg and zidane.jpg (ultralytics), astronaut (scikit-image)."""
    images: list[tuple[str, bytes]] = []
    spec = importlib.util.find_spec("ultralytics")
    if spec is not None and spec.origin is not None:
        assets = Path(spec.origin).parent / "assets"
        images += [(name, (assets / name).read_bytes()) for name in ("bus.jpg", "zidane.jpg")]
    with contextlib.suppress(ImportError):
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
        images.append(("astronaut.jpg", buffer.getvalue()))
    if not images:
        raise SystemExit("no test photos: install ultralytics or scikit-image (the dev extras)")
    return images


def publish_random_model(store: ModelStore, arch: str, seed: int = 0) -> ModelVersion:
    """A seeded randomly initialised ``arch`` with 1000 classes, published as model ``arch``."""
    torch.manual_seed(seed)
    model = build_model(arch, NUM_CLASSES)
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    return publish_state_dict(
        store, arch, model.state_dict(), ModelMetadata(architecture=arch, class_names=names)
    )


# -- measurement -----------------------------------------------------------------------------------------
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
            out["server_timing_mean"] = {
                k: round(float(np.mean([t[k] for t in self.timings])), 3) for k in self.timings[0]
            }
            out["server_timing_p50"] = {
                k: round(float(np.median([t[k] for t in self.timings])), 3) for k in self.timings[0]
            }
        return out


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def run_load(
    key: str,
    label: str,
    calls: Sequence[Call],
    *,
    seconds: float,
    requests: int,
    warmup_s: float,
    pids: dict[str, int],
    idle_wait_s: float = 0.0,
    note: str = "",
) -> Result:
    """Run ``calls`` (one per client thread) concurrently: ``warmup_s`` of warm-up, then ``requests`` calls
    in all (when > 0) or for ``seconds``. Each call returns the server's timing fields or None."""
    if idle_wait_s > 0:
        wait_for_idle(idle_wait_s)
    n = len(calls)
    lock = threading.Lock()
    state: dict[str, float] = {"issued": 0}
    meter = CpuMeter(pids)
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
        "1 per call",
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
    """Call ``step`` (returns images done) in this thread: ``warmup_s`` of warm-up, then for ``seconds``."""
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


# -- processes -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@contextlib.contextmanager
def subprocess_service(
    name: str, module: str, env: dict[str, str], address: str, log_dir: Path, ready: Callable[[], bool]
) -> Iterator[Service]:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
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


def grpc_serving(address: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def http_healthy(base_url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@contextlib.contextmanager
def classifier_service(
    args: argparse.Namespace, model_dir: Path, env: dict[str, str], log_dir: Path, model_name: str
) -> Iterator[Service]:
    settings = {
        "VISION_MODEL_DIR": str(model_dir),
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
        "VISION_CLASSIFIER_DEVICE": args.device,
        "VISION_CLASSIFIER_DEFAULT_MODEL": model_name,
        "VISION_CLASSIFIER_MAX_BATCH_SIZE": str(args.max_batch_size),
    }
    if args.max_batch_delay_ms is not None:
        settings["VISION_CLASSIFIER_MAX_BATCH_DELAY_MS"] = str(args.max_batch_delay_ms)
    if args.in_process:
        from classifier_svc.config import ClassifierSettings
        from classifier_svc.server import create_classifier_server

        with _patched_environ(settings):
            overrides: dict[str, Any] = {"port": 0}  # the rest from the environment set just above
            server, engine = create_classifier_server(ClassifierSettings(**overrides))

        def stop() -> None:
            server.stop(grace=None).wait()
            engine.close()

        try:
            yield Service("classifier_svc", f"127.0.0.1:{server.port}", os.getpid(), stop)
        finally:
            stop()
        return
    port = free_port()
    address = f"127.0.0.1:{port}"
    extra = dict(item.split("=", 1) for item in args.service_env)
    full_env = {**env, **settings, **extra, "VISION_CLASSIFIER_PORT": str(port)}
    with subprocess_service(
        "classifier_svc", "classifier_svc", full_env, address, log_dir, grpc_serving(address)
    ) as service:
        yield service


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]) -> Iterator[None]:
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


# -- clients ---------------------------------------------------------------------------------------------
def grpc_calls(address: str, images: list[bytes], n: int) -> tuple[list[Call], Callable[[], None]]:
    """One channel (own connection) per client; each sends its image, top_k=5."""
    channels = [
        grpc.insecure_channel(
            address,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        for _ in range(n)
    ]

    def make(i: int) -> Call:
        stub = classifier_pb2_grpc.ClassifierStub(channels[i])
        request = classifier_pb2.ClassifyRequest(image=images[i % len(images)], top_k=5)

        def call() -> dict[str, float]:
            timing = stub.Classify(request, timeout=RPC_TIMEOUT_S).timing
            return {key: float(getattr(timing, key)) for key in TIMING_KEYS}

        return call

    def close() -> None:
        for channel in channels:
            channel.close()

    return [make(i) for i in range(n)], close


def http_calls(base_url: str, images: list[bytes], n: int) -> tuple[list[Call], Callable[[], None]]:
    """One httpx.Client (keep-alive connection) per client; the multipart body is built once per client,
    so the load generator spends as little of the shared CPU as it can."""
    clients = [httpx.Client(base_url=base_url, timeout=RPC_TIMEOUT_S) for _ in range(n)]
    mapping = {
        "decode": "decode_ms",
        "queue": "queue_ms",
        "inference": "inference_ms",
        "server_total": "total_ms",
        "batch_size": "batch_size",
    }

    def make(i: int) -> Call:
        client = clients[i]
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + images[i % len(images)]
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}

        def call() -> dict[str, float]:
            response = client.post("/predict", content=body, headers=headers)
            response.raise_for_status()
            timing = response.json()["timing_ms"]
            return {ours: float(timing[theirs]) for theirs, ours in mapping.items()}

        return call

    def close() -> None:
        for client in clients:
            client.close()

    return [make(i) for i in range(n)], close


def bare_calls(model: LoadedClassifier, images: list[bytes], n: int) -> list[Call]:
    """What a hand-rolled app does per request: decode + preprocess + batch-1 forward, in its own thread."""

    def make(i: int) -> Call:
        data = images[i % len(images)]

        def call() -> None:
            model.predict(model.preprocessing(decode_image(data)).unsqueeze(0))

        return call

    return [make(i) for i in range(n)]


# -- report ----------------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(results: list[Result]) -> str:
    lines = [
        "| # | what | clients | batch | images/s | p50 ms | p99 ms | n | errors | other load, cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.key} | {r.label} | {r.concurrency} | {r.batch} | {r.throughput:.1f} | "
            f"{fmt(r.percentile(50))} | {fmt(r.percentile(99))} | {r.images} | {r.errors} | "
            f"{fmt(r.other_cores, 2)} |"
        )
    return "\n".join(lines)


def contention_warning(results: list[Result], threshold: float = 0.2) -> str:
    """A warning when processes other than ours used CPU during a phase (the numbers are then unreliable)."""
    busy = [r for r in results if r.other_cores is not None and r.other_cores > threshold]
    if not busy:
        return ""
    worst = max(busy, key=lambda r: r.other_cores or 0.0)
    return (
        f"**WARNING: other processes on this machine used CPU during {', '.join(r.key for r in busy)} "
        f"(up to {worst.other_cores:.2f} cores in {worst.key}); those rows and the ratios are not reliable. "
        "Rerun on an idle machine.**"
    )


def ratio_rows(by_key: dict[str, Result], equal_conc: float, gpu: bool) -> list[dict[str, Any]]:
    comparators = [
        ("bare at equal concurrency (D, best of before/after)", equal_conc),
        ("bare forward batch 1 (A)", by_key["A"].throughput),
        ("bare decode+preprocess+forward batch 1, 1 thread (C)", by_key["C"].throughput),
        ("bare forward at max batch (B)", by_key["B"].throughput),
    ]
    rows: list[dict[str, Any]] = []
    for svc_key, svc_name in (("S", "classifier_svc"), ("G", "gateway")):
        if svc_key not in by_key:
            continue
        svc = by_key[svc_key].throughput
        for comp_name, comp in comparators:
            target: float | None = None
            if not gpu and comp_name.startswith("bare at equal"):
                target = CPU_TARGETS[svc_name]
            if gpu and svc_key == "S" and comp_name.startswith("bare forward at max batch"):
                target = GPU_TARGET_BATCHED
            value = svc / comp if comp > 0 else 0.0
            rows.append(
                {
                    "service": svc_name,
                    "versus": comp_name,
                    "ratio": round(value, 3),
                    "target": target,
                    "met": None if target is None else value >= target,
                }
            )
        bare_cpu = [v for k in ("D1", "D2") if (v := cpu_ms_per_image(by_key[k], service_side=False))]
        svc_cpu = cpu_ms_per_image(by_key[svc_key], service_side=True)
        if svc_cpu and bare_cpu:
            value = float(np.mean(bare_cpu)) / svc_cpu
            rows.append(
                {
                    "service": svc_name,
                    "versus": "bare at equal concurrency (D), CPU-normalised: bare CPU ms/image / "
                    "service-side CPU ms/image (less sensitive to other load)",
                    "ratio": round(value, 3),
                    "target": None,
                    "met": None,
                }
            )
    return rows


def cpu_ms_per_image(result: Result, *, service_side: bool) -> float | None:
    """CPU ms per image; ``service_side``: the service processes only (not the load generator), unless the
    service runs inside this process (then everything: it cannot be told apart)."""
    if not result.cpu_s or not result.images:
        return None
    in_process = service_side and "classifier_svc" not in result.cpu_s
    used = [v for k, v in result.cpu_s.items() if in_process or not (service_side and k.startswith("bench"))]
    return sum(used) * 1000 / result.images


def ratios_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| service | versus | ratio | target | met |", "|---|---|---:|---:|---|"]
    for row in rows:
        target = "-" if row["target"] is None else f">= {row['target']:.2f}x"
        met = "-" if row["met"] is None else ("**yes**" if row["met"] else "**NO**")
        lines.append(f"| {row['service']} | {row['versus']} | {row['ratio']:.2f}x | {target} | {met} |")
    return "\n".join(lines)


def profile_table(results: list[Result]) -> str:
    """Where the time went (server timing fields, ms) and CPU ms per image per process."""
    lines = [
        "| # | decode+prep ms | queue ms | batch inference ms | inference ms/image | mean batch "
        "| server total ms | client p50 - server p50 ms | CPU ms/image by process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cpu = ", ".join(f"{k} {v * 1000 / max(r.images, 1):.1f}" for k, v in r.cpu_s.items()) or "-"
        if not r.timings:
            lines.append(f"| {r.key} | - | - | - | - | - | - | - | {cpu} |")
            continue

        def col(name: str, t: list[dict[str, float]] = r.timings) -> np.ndarray:
            return np.array([x[name] for x in t])

        per_image = float(np.mean(col("inference_ms") / np.maximum(col("batch_size"), 1)))
        overhead = (r.percentile(50) or 0.0) - float(np.median(col("total_ms")))
        lines.append(
            f"| {r.key} | {col('decode_ms').mean():.1f} | {col('queue_ms').mean():.1f} | "
            f"{col('inference_ms').mean():.1f} | {per_image:.1f} | {col('batch_size').mean():.2f} | "
            f"{col('total_ms').mean():.1f} | {overhead:.1f} | {cpu} |"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients N (default 8)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per load phase, all clients together (default: use --seconds)",
    )
    amount.add_argument("--seconds", type=float, default=15.0, help="load phase length (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="warm-up per phase (default 3)")
    parser.add_argument(
        "--bare-seconds", type=float, default=4.0, help="duration of each single-thread bare row (default 4)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="service max batch and bare batched row (default 16 on CPU, 64 on CUDA)",
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=None,
        help="VISION_CLASSIFIER_MAX_BATCH_DELAY_MS (default: the service's own default)",
    )
    parser.add_argument("--arch", choices=ARCHITECTURES.names, default=ARCHITECTURES.default)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads in this process and the service (default: torch's "
        "default, the physical core count)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run classifier_svc inside this process (shares the GIL with the clients)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each phase, wait up to S seconds for other processes to leave the CPU idle (shared "
        "machines; default 0: don't wait)",
    )
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the classifier_svc subprocess, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes KEY=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    device = resolve_device(args.device)
    args.device = str(device)
    gpu = device.type == "cuda"
    args.max_batch_size = args.max_batch_size or (64 if gpu else 16)
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    seconds = float(args.seconds)
    requests = int(args.requests)
    n = args.concurrency
    cores = os.cpu_count() or 1
    amount = f"{requests} requests" if requests else f"{seconds:g} s"

    print(f"$ {command}\n")
    print(
        f"- machine: {platform.machine()} {cores} CPU cores, device **{device}**"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if gpu else ''}; torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"- model: {args.arch}, {NUM_CLASSES} classes, random weights (seed 0), "
        f"{'float16 + channels_last' if gpu else 'float32'}; service max batch {args.max_batch_size}, "
        f"batch delay {'default' if args.max_batch_delay_ms is None else args.max_batch_delay_ms} ms"
        + (f"; extra service env {' '.join(args.service_env)}" if args.service_env else "")
    )
    print(
        f"- threads: torch intra-op threads = {args.threads} in this process (bare rows) and in "
        f"classifier_svc (OMP_NUM_THREADS/MKL_NUM_THREADS={args.threads}); classifier_svc "
        f"{'in this process' if args.in_process else 'and gateway run as subprocesses'}; the service, "
        f"the gateway and the load generator (this process) share the machine's {cores} cores"
    )
    print(
        f"- load phases: {n} clients, {args.warmup_seconds:g} s warm-up, then {amount}; single-thread "
        f"bare rows {args.bare_seconds:g} s each\n",
        flush=True,
    )

    images_named = test_images()
    images = [data for _, data in images_named]
    results: list[Result] = []
    sub_env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "YOLO_OFFLINE": "1",
    }
    pids_bench = {"bench (load generator)": os.getpid()}

    with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
        tmp_path = Path(tmp)
        store = ModelStore(tmp_path / "models")
        version = publish_random_model(store, args.arch)
        model = load_for_serving(version, device, half=True)

        # A, B: the bare forward on preprocessed tensors.
        tensors = [model.preprocessing(decode_image(data)) for data in images]
        for key, bs in (("A", 1), ("B", args.max_batch_size)):
            batch = torch.stack([tensors[i % len(tensors)] for i in range(bs)])
            results.append(
                run_loop(
                    key,
                    f"bare forward, preprocessed tensors, batch {bs}",
                    lambda b=batch: (model.predict(b), b.shape[0])[1],  # type: ignore[misc]
                    seconds=args.bare_seconds,
                    warmup_s=1.0,
                    idle_wait_s=args.wait_idle,
                    batch=str(bs),
                )
            )
            print(f"  {results[-1].key}: {results[-1].throughput:.1f} images/s", flush=True)
        counter = iter(range(1 << 62))

        def decode_only() -> int:
            model.preprocessing(decode_image(images[next(counter) % len(images)]))
            return 1

        def full_one() -> int:
            data = images[next(counter) % len(images)]
            model.predict(model.preprocessing(decode_image(data)).unsqueeze(0))
            return 1

        results.append(
            run_loop(
                "P",
                "decode+preprocess only (no model), 1 thread",
                decode_only,
                seconds=min(args.bare_seconds, 3.0),
                warmup_s=0.5,
                idle_wait_s=args.wait_idle,
                batch="-",
            )
        )
        results.append(
            run_loop(
                "C",
                "bare decode+preprocess+forward, batch 1, 1 thread",
                full_one,
                seconds=args.bare_seconds,
                warmup_s=1.0,
                idle_wait_s=args.wait_idle,
                batch="1",
            )
        )
        for r in results[-2:]:
            print(f"  {r.key}: {r.throughput:.1f} images/s", flush=True)

        def equal_concurrency(key: str, when: str) -> Result:
            label = f"bare at equal concurrency ({when}): {n} threads, each decode+preprocess+forward batch 1"
            r = run_load(
                key,
                label,
                bare_calls(model, images, n),
                seconds=seconds,
                requests=requests,
                warmup_s=args.warmup_seconds,
                idle_wait_s=args.wait_idle,
                pids={"bench (bare model)": os.getpid()},
            )
            print(f"  {r.key}: {r.throughput:.1f} images/s", flush=True)
            return r

        results.append(equal_concurrency("D1", "before"))

        with classifier_service(args, store.root, sub_env, tmp_path, version.name) as svc:
            pids = dict(pids_bench)
            if not args.in_process:
                pids["classifier_svc"] = svc.pid
            calls, close = grpc_calls(svc.address, images, n)
            try:
                results.append(
                    run_load(
                        "S",
                        f"classifier_svc, {n} gRPC clients",
                        calls,
                        seconds=seconds,
                        requests=requests,
                        warmup_s=args.warmup_seconds,
                        idle_wait_s=args.wait_idle,
                        pids=pids,
                    )
                )
            finally:
                close()
            print(f"  S: {results[-1].throughput:.1f} images/s", flush=True)

            if not args.skip_gateway:
                port = free_port()
                base_url = f"http://127.0.0.1:{port}"
                gw_env = {
                    **sub_env,
                    "VISION_GATEWAY_PORT": str(port),
                    "VISION_GATEWAY_CLASSIFIER_ADDR": svc.address,
                }
                with subprocess_service(
                    "gateway", "gateway", gw_env, base_url, tmp_path, http_healthy(base_url)
                ) as gw:
                    pids["gateway"] = gw.pid
                    calls, close = http_calls(base_url, images, n)
                    try:
                        results.append(
                            run_load(
                                "G",
                                f"gateway POST /predict, {n} HTTP clients",
                                calls,
                                seconds=seconds,
                                requests=requests,
                                warmup_s=args.warmup_seconds,
                                idle_wait_s=args.wait_idle,
                                pids=pids,
                            )
                        )
                    finally:
                        close()
                    print(f"  G: {results[-1].throughput:.1f} images/s", flush=True)

        results.append(equal_concurrency("D2", "after"))

    by_key = {r.key: r for r in results}
    equal_conc = max(by_key["D1"].throughput, by_key["D2"].throughput)
    ratios = ratio_rows(by_key, equal_conc, gpu)

    print("\n## Throughput and latency\n")
    print(results_table(results))
    warning = contention_warning(results)
    if warning:
        print(f"\n{warning}")
    print(
        "\nA, B, C, P, D: the service's own model wrapper "
        "(`vision.serving.classifier.load_for_serving(...).predict`), "
        "no gRPC and no batcher. Latency of A/B/C/P is per call (a call is a whole batch for B). "
        "S, G: client-observed latency. 'Other load': CPU cores used during the phase by processes that are "
        "not this benchmark's (/proc/stat).\n"
        f"'Bare at equal concurrency' (D) = {n} threads, each decoding + preprocessing its own JPEG and "
        "running a batch-1 forward, as a hand-rolled app would; the ratios use the better of D1 and D2.\n"
    )
    print("## Ratios\n")
    print(ratios_table(ratios))
    print(
        "\nTargets: CPU classifier_svc >= 0.9x and gateway >= 0.8x of bare at equal concurrency (D); "
        "GPU classifier_svc (dynamic batching) >= 0.8x of bare forward at max batch (B)."
    )
    print("\n## Where the time goes (server timing fields, means; CPU per image by process)\n")
    print(profile_table(results))
    for r in results:
        if r.errors:
            print(f"\n{r.key}: {r.errors} errors, first: {r.first_error}")

    if args.json is not None:
        payload = {
            "command": command,
            "config": {
                "concurrency": n,
                "seconds": None if requests else seconds,
                "requests": requests or None,
                "warmup_seconds": args.warmup_seconds,
                "max_batch_size": args.max_batch_size,
                "max_batch_delay_ms": args.max_batch_delay_ms,
                "arch": args.arch,
                "device": str(device),
                "threads": args.threads,
                "in_process": args.in_process,
                "images": [name for name, _ in images_named],
            },
            "environment": {
                "cpu_count": cores,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "gpu": torch.cuda.get_device_name(device) if gpu else None,
            },
            "results": [r.summary() for r in results],
            "bare_equal_concurrency_images_per_s": round(equal_conc, 3),
            "ratios": ratios,
            "contention_warning": warning or None,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
