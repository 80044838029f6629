#!/usr/bin/env python
"""detector_svc throughput against bare ``YOLO.predict``, in one run on one machine.

* bare: one thread calling ``YOLO(weights).predict(image)`` image after image (decoding the JPEG bytes with
  OpenCV first, as a hand-rolled API would). The bare model is not shared between threads: Ultralytics
  models are not thread-safe.
* detector_svc (``python -m detector_svc`` subprocess) under N concurrent gRPC clients, one subprocess per
  ``--batch-sizes`` value (``VISION_DETECTOR_MAX_BATCH_SIZE``), annotate off.
* The phases run interleaved, ``--rounds`` times (bare, service b1, service b8, bare, ...), so load from
  other processes hits every configuration alike; ratio = service / bare images/s within each round, and the
  table shows medians over the rounds plus the machine's load average while it ran. CPU ms / image is the
  serving process's CPU time (all threads) per image: unlike images/s, it hardly depends on other load.

Every request sends a real JPEG: ultralytics' bus.jpg (810x1080) or zidane.jpg (1280x720), client i the
image i mod 2. The model is YOLO11n from the package's ``yolo11n.yaml`` with BatchNorm statistics set from the
two photos and a raised class bias, so it finds boxes as a trained model would (speed does not depend on
the weights otherwise); it is saved as a ``.pt`` and imported into a temporary store like a user's file.

    python benchmarks/detector_bench.py                       # CPU: 4 clients, 3 rounds of 10 s phases
    python benchmarks/detector_bench.py --device cuda --concurrency 32 --batch-sizes 1,8,16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from the repository root

from detector_svc.offline import make_ultralytics_offline

make_ultralytics_offline()

import cv2  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.utils import ASSETS  # noqa: E402

from detector_svc.checkpoints import import_yolo_checkpoint  # noqa: E402
from vision.models.store import ModelStore  # noqa: E402
from vision.v1 import detector_pb2, detector_pb2_grpc  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("bus.jpg", "zidane.jpg")
CPU_TARGET = 0.9


def make_weights(path: Path) -> Path:
    """YOLO11n that finds boxes on the photos (see the module docstring), saved as an Ultralytics .pt."""
    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    net = model.model
    assert isinstance(net, torch.nn.Module)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    net.train()
    with torch.no_grad():
        for photo in PHOTOS:
            image = LetterBox((640, 640), auto=True, stride=32)(image=cv2.imread(str(ASSETS / photo)))
            net(torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255)
        for branch in net.model[-1].cv3:  # type: ignore[index, union-attr]
            branch[-1].weight *= 0.1
            branch[-1].bias.fill_(-1.5)
    net.eval()
    model.save(str(path))
    return path


def run_for(seconds: float, clients: int, call: Callable[[int], None]) -> tuple[int, float, list[float]]:
    """(requests, wall s, latencies in ms) of ``clients`` threads calling ``call(i)`` for ``seconds``."""
    done: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(client: int) -> None:
        i = client
        while time.perf_counter() < stop:
            start = time.perf_counter()
            call(i)
            with lock:
                done.append((time.perf_counter() - start) * 1000)
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done), time.perf_counter() - start, done


class Bare:
    """The baseline: Ultralytics used directly, one image at a time, in this process."""

    def __init__(self, weights: Path, images: list[bytes], device: str) -> None:
        self.model = YOLO(str(weights), task="detect")
        self.images = images
        self.kwargs: dict[str, Any] = {"conf": 0.25, "iou": 0.45, "verbose": False, "device": device}
        if device.startswith("cuda"):
            self.kwargs["quantize"] = 16
        for i in range(3):
            self.call(i)  # warm-up

    def call(self, i: int) -> None:
        frame = cv2.imdecode(np.frombuffer(self.images[i % len(self.images)], np.uint8), cv2.IMREAD_COLOR)
        self.model.predict(frame, **self.kwargs)

    def measure(self, seconds: float) -> dict[str, Any]:
        cpu = time.process_time()
        n, wall, lat = run_for(seconds, 1, self.call)
        cpu_ms = (time.process_time() - cpu) * 1000 / max(n, 1)
        return row("bare YOLO.predict (decode + predict, 1 thread)", 1, 1.0, n, wall, lat, cpu_ms)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m detector_svc`` in a subprocess with ``max_batch_size``, and gRPC clients to it."""

    def __init__(self, store: Path, images: list[bytes], clients: int, batch: int, device: str) -> None:
        self.port, self.images, self.clients, self.batch = free_port(), images, clients, batch
        env = {
            **os.environ,
            "VISION_MODEL_DIR": str(store),
            "VISION_DETECTOR_PORT": str(self.port),
            "VISION_DETECTOR_FETCH_DEFAULT": "false",
            "VISION_DETECTOR_MAX_BATCH_SIZE": str(batch),
            "VISION_DETECTOR_MAX_QUEUE": str(max(64, clients * 2)),
            "VISION_DETECTOR_DEVICE": device,
            "VISION_LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "detector_svc"], env=env, cwd=REPO_ROOT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        wait_serving(self.channel)
        self.stub = detector_pb2_grpc.DetectorStub(self.channel)
        self.batch_sizes: list[int] = []
        for i in range(2 * clients):
            self.call(i)  # warm-up

    def call(self, i: int) -> None:
        request = detector_pb2.DetectRequest(image=self.images[i % len(self.images)])
        self.batch_sizes.append(self.stub.Detect(request, timeout=120).timing.batch_size)

    def measure(self, seconds: float) -> dict[str, Any]:
        self.batch_sizes.clear()
        cpu = process_cpu_s(self.proc.pid)
        n, wall, lat = run_for(seconds, self.clients, self.call)
        cpu_ms = (process_cpu_s(self.proc.pid) - cpu) * 1000 / max(n, 1)
        label = f"detector_svc gRPC, {self.clients} clients, max batch {self.batch}"
        return row(label, self.clients, float(np.mean(self.batch_sizes)), n, wall, lat, cpu_ms)

    def close(self) -> None:
        self.channel.close()
        self.proc.terminate()
        self.proc.wait(30)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all threads (Linux /proc); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_serving(channel: grpc.Channel, timeout: float = 180.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise SystemExit("detector_svc did not become SERVING")


def row(
    label: str, clients: int, batch: float, n: int, wall: float, lat: list[float], cpu_ms: float
) -> dict[str, Any]:
    return {
        "cpu_ms_per_image": cpu_ms,
        "label": label,
        "clients": clients,
        "mean_batch": batch,
        "requests": n,
        "images_per_s": n / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def summarise(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per configuration: medians over the rounds; ratio = median of the per-round service/bare ratios."""
    out = []
    for column in range(len(rounds[0])):
        runs = [r[column] for r in rounds]
        ratios = [r[column]["images_per_s"] / r[0]["images_per_s"] for r in rounds]
        summary: dict[str, Any] = {
            k: float(np.median([run[k] for run in runs])) for k in runs[0] if k != "label"
        }
        summary |= {"label": runs[0]["label"], "ratio": float(np.median(ratios)), "ratios": ratios}
        out.append(summary)
    return out


def report(rows: list[dict[str, Any]], device: str, rounds: int, seconds: float, load: str) -> str:
    lines = [
        f"detector_bench on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device {device}, torch {torch.__version__}; {rounds} rounds of {seconds:g} s per configuration; "
        f"load average before/after: {load}",
        "",
        "| what | clients | mean batch | images/s | p50 ms | p99 ms | CPU ms / image "
        "| service / bare (per round) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_round = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(
            f"| {r['label']} | {r['clients']:.0f} | {r['mean_batch']:.2f} | {r['images_per_s']:.2f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['cpu_ms_per_image']:.0f} | "
            f"{r['ratio']:.2f} ({per_round}) |"
        )
    if device == "cpu":
        lines += ["", f"target on CPU: detector_svc / bare >= {CPU_TARGET}"]
    return "\n".join(lines)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent gRPC clients")
    parser.add_argument("--batch-sizes", default="1,8", help="VISION_DETECTOR_MAX_BATCH_SIZE values to run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all phases")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    images = [(ASSETS / photo).read_bytes() for photo in PHOTOS]
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(Path(tmp) / "yolo11n.pt")
        store = ModelStore(Path(tmp) / "models")
        import_yolo_checkpoint(store, weights, "yolo11n")
        bare = Bare(weights, images, args.device)
        batches = [int(b) for b in args.batch_sizes.split(",")]
        services = [Service(store.root, images, args.concurrency, b, args.device) for b in batches]
        phases: list[Bare | Service] = [bare, *services]
        load_before = load_average()
        try:
            rounds = [[phase.measure(args.seconds) for phase in phases] for _ in range(args.rounds)]
        finally:
            for svc in services:
                svc.close()
    rows = summarise(rounds)
    print(report(rows, args.device, args.rounds, args.seconds, f"{load_before} / {load_average()}"))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "summary": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
