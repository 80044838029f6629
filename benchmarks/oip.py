"""The Open Inference Protocol against the native API of classifier_svc, side by side in one run.

* native: ``vision.v1.Classifier/Classify`` (top_k 5) from N asyncio gRPC callers on one channel.
* OIP: ``inference.GRPCInferenceService/ModelInfer`` from Triton's own asyncio client
  (``tritonclient.grpc.aio``), N callers on one client, input ``IMAGE`` (one JPEG), output
  ``PROBABILITIES`` with ``class_count=5`` (the classification extension: the same top 5).

Both send the same real JPEG (ultralytics' bus.jpg) to the same service; the phases alternate, ``--rounds``
times, and the ratio (OIP / native requests per second) is taken per round, the median reported. The
target: OIP within 10% of native (ratio >= 0.9).

    python -m benchmarks.oip                                   # starts classifier_svc: 8 callers, 3 x 10 s
    python -m benchmarks.oip --address 127.0.0.1:50051 --model resnet18
    python -m benchmarks.oip --quick                           # a smoke run: 1 round of 2 s

Without ``--address`` a classifier_svc subprocess serves a seeded random ResNet18 (1000 classes; speed does
not depend on the weights) from a temporary store. This process never imports ``vision.oip_pb``: Triton's
client registers the same protobuf package (``inference``) and one process cannot hold both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput

from benchmarks.harness.cpu import cpu_seconds, load_average, wait_for_idle
from benchmarks.harness.procs import Service, grpc_service, thread_env
from benchmarks.harness.report import command_line, fmt, markdown_table, write_json
from vision.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2

TARGET_RATIO = 0.9
TOP_K = 5


@dataclass(frozen=True)
class Phase:
    api: str
    requests: int
    seconds: float
    cpu_s: float | None = None  # the service process's CPU seconds during the phase (None: not measured)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """The service's CPU milliseconds per request: hardly moved by other load on the machine."""
        return None if self.cpu_s is None or not self.requests else self.cpu_s * 1000 / self.requests


async def _drive(
    call: Callable[[], Awaitable[object]], concurrency: int, seconds: float
) -> tuple[int, float]:
    """``call`` from ``concurrency`` callers for ``seconds`` (after one warm-up call each): calls done."""
    await asyncio.gather(*(call() for _ in range(concurrency)))
    done = 0
    start = time.perf_counter()
    stop = start + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done, time.perf_counter() - start


async def native_phase(address: str, model: str, image: bytes, concurrency: int, seconds: float) -> Phase:
    request = classifier_pb2.ClassifyRequest(image=image, model=common_pb2.ModelRef(name=model), top_k=TOP_K)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        done, elapsed = await _drive(lambda: stub.Classify(request, timeout=60), concurrency, seconds)
    return Phase("native Classify", done, elapsed)


async def oip_phase(address: str, model: str, image: bytes, concurrency: int, seconds: float) -> Phase:
    tensor = InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    outputs = [InferRequestedOutput("PROBABILITIES", class_count=TOP_K)]
    client = triton_aio.InferenceServerClient(address)
    try:
        done, elapsed = await _drive(
            lambda: client.infer(model, [tensor], outputs=outputs, client_timeout=60), concurrency, seconds
        )
    finally:
        await client.close()
    return Phase("OIP ModelInfer (tritonclient.grpc.aio)", done, elapsed)


def measure(
    address: str,
    model: str,
    image: bytes,
    concurrency: int,
    seconds: float,
    rounds: int,
    pid: int | None = None,
    idle_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Alternating phases; per-round ratios and their median (and CPU per request when ``pid`` is the
    service's process)."""
    natives: list[Phase] = []
    oips: list[Phase] = []
    for _ in range(rounds):
        for run, out in ((native_phase, natives), (oip_phase, oips)):
            if idle_wait_s:
                wait_for_idle(idle_wait_s)
            before = cpu_seconds(pid) if pid else None
            phase = asyncio.run(run(address, model, image, concurrency, seconds))
            after = cpu_seconds(pid) if pid else None
            if before is not None and after is not None:
                phase = dataclasses.replace(phase, cpu_s=after - before)
            out.append(phase)
    ratios = [o.rate / n.rate if n.rate else 0.0 for n, o in zip(natives, oips, strict=True)]
    result: dict[str, Any] = {
        "native_rps": statistics.median(p.rate for p in natives),
        "oip_rps": statistics.median(p.rate for p in oips),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "load_average": load_average(),
    }
    native_cpu = [p.cpu_ms for p in natives if p.cpu_ms is not None]
    oip_cpu = [p.cpu_ms for p in oips if p.cpu_ms is not None]
    if native_cpu and oip_cpu:
        result["native_cpu_ms"] = statistics.median(native_cpu)
        result["oip_cpu_ms"] = statistics.median(oip_cpu)
        result["cpu_ratio"] = result["native_cpu_ms"] / result["oip_cpu_ms"]
    return result


@contextlib.contextmanager
def started_classifier(threads: int) -> Iterator[Service]:
    from benchmarks.harness.inputs import publish_random_model  # torch: only when a service is started here
    from vision.models.store import ModelStore

    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp) / "models")
        publish_random_model(store, "resnet18")
        env = {
            **thread_env(threads),
            "YOLO_OFFLINE": "1",
            "VISION_MODEL_DIR": str(store.root),
            "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
            "VISION_CLASSIFIER_METRICS_PORT": "0",
        }
        with grpc_service("classifier_svc", "VISION_CLASSIFIER_PORT", env, Path(tmp)) as svc:
            yield svc


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="", help="a running classifier_svc (default: start one)")
    parser.add_argument("--model", default="resnet18", help="the model both APIs ask for")
    parser.add_argument("--concurrency", type=int, default=8, help="callers per phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3, help="native/OIP phase pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a started service")
    parser.add_argument("--pid", type=int, default=0, help="with --address: its process, for CPU per request")
    parser.add_argument("--wait-idle", type=float, default=0.0, help="wait up to S s for an idle machine")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s phases")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    spec = importlib.util.find_spec("ultralytics")  # its bundled bus.jpg, without importing it (or torch)
    if spec is None or spec.origin is None:
        raise SystemExit("needs ultralytics' bundled bus.jpg (the dev extras)")
    image = (Path(spec.origin).parent / "assets" / "bus.jpg").read_bytes()
    with contextlib.ExitStack() as stack:
        address, pid = args.address, args.pid or None
        if not address:
            service = stack.enter_context(started_classifier(args.threads))
            address, pid = service.address, service.pid
        result = measure(
            address, args.model, image, args.concurrency, args.seconds, args.rounds, pid, args.wait_idle
        )
    print(
        f"`{command_line()}`: {args.concurrency} callers, {args.rounds} x {args.seconds:g} s phases, "
        "bus.jpg\n"
    )
    print(
        markdown_table(
            ["API", "requests/s (median)", "service CPU ms / request (median)"],
            "lrr",
            [
                [
                    "native Classify (grpc.aio)",
                    f"{result['native_rps']:.1f}",
                    fmt(result.get("native_cpu_ms")),
                ],
                [
                    "OIP ModelInfer (tritonclient.grpc.aio)",
                    f"{result['oip_rps']:.1f}",
                    fmt(result.get("oip_cpu_ms")),
                ],
            ],
        )
    )
    met = "met" if result["ratio"] >= TARGET_RATIO else "NOT met"
    ratio = result["ratio"]
    print(f"\nratio OIP / native requests/s: {ratio:.3f} (target >= {TARGET_RATIO}: {met}); per round:")
    print(", ".join(f"{r:.2f}" for r in result["ratios"]) + f"; load average {result['load_average']}")
    if "cpu_ratio" in result:
        print(f"CPU per request, native / OIP: {result['cpu_ratio']:.3f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
