#!/usr/bin/env python
"""explain_svc throughput against classifier_svc for the same model, in one run on one machine.

Both services run as subprocesses on one model store holding a seeded random ResNet18 (1000 classes); the
same N gRPC clients send the same real photos to each in turn. Printed: images/s and latency per phase, and
the ratio explain / classify with the targets (CAM and Grad-CAM at the default layer >= 0.8x; Grad-CAM and
Grad-CAM++ at a middle layer reported).

    python benchmarks/explain_bench.py                        # 8 clients, 15 s per phase
    python benchmarks/explain_bench.py --overlay-side 640      # VISION_EXPLAIN_MAX_OVERLAY_SIDE
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import torch
from classifier_bench import (
    RPC_TIMEOUT_S,
    TIMING_KEYS,
    Call,
    Result,
    Service,
    fmt,
    free_port,
    grpc_calls,
    grpc_serving,
    publish_random_model,
    results_table,
    run_load,
    subprocess_service,
    test_images,
)

from vision.models.store import ModelStore
from vision.v1 import explainer_pb2, explainer_pb2_grpc

PHASES: tuple[
    tuple[str, str, explainer_pb2.CamMethod, str, float | None], ...
] = (  # key, label, method, layer, target
    ("cam", "CAM, last conv block (layer4)", explainer_pb2.CAM_METHOD_CAM, "", 0.8),
    ("gradcam", "Grad-CAM, last conv block (layer4)", explainer_pb2.CAM_METHOD_GRAD_CAM, "", 0.8),
    ("gradcam_l3", "Grad-CAM, middle layer (layer3)", explainer_pb2.CAM_METHOD_GRAD_CAM, "layer3", None),
    (
        "gradcampp_l3",
        "Grad-CAM++, middle layer (layer3)",
        explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
        "layer3",
        None,
    ),
)


def explain_calls(
    address: str, images: list[bytes], n: int, method: explainer_pb2.CamMethod, layer: str
) -> tuple[list[Call], Callable[[], None]]:
    channels = [
        grpc.insecure_channel(
            address,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        for _ in range(n)
    ]

    def make(i: int) -> Call:
        stub = explainer_pb2_grpc.ExplainerStub(channels[i])
        request = explainer_pb2.ExplainRequest(image=images[i % len(images)], method=method, layer=layer)

        def call() -> dict[str, float]:
            timing = stub.Explain(request, timeout=RPC_TIMEOUT_S).timing
            return {key: float(getattr(timing, key)) for key in TIMING_KEYS}

        return call

    def close() -> None:
        for channel in channels:
            channel.close()

    return [make(i) for i in range(n)], close


@contextlib.contextmanager
def service(name: str, module: str, prefix: str, env: dict[str, str], log_dir: Path) -> Iterator[Service]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    full_env = {**env, f"{prefix}PORT": str(port)}
    with subprocess_service(name, module, full_env, address, log_dir, grpc_serving(address)) as svc:
        yield svc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="load phase length (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each service (default: all)")
    parser.add_argument("--overlay-side", type=int, default=0, help="VISION_EXPLAIN_MAX_OVERLAY_SIDE")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    print(f"$ {shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}\n")
    print(
        f"- {os.cpu_count()} CPU cores, device {args.device}, torch threads per service {threads}; "
        f"{args.concurrency} gRPC clients; {args.seconds:g} s per phase; resnet18, 1000 classes"
    )
    images = [data for _, data in test_images()]
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        store = ModelStore(Path(tmp) / "models")
        publish_random_model(store, "resnet18")
        env = {
            **os.environ,
            "VISION_MODEL_DIR": str(store.root),
            "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
            "VISION_CLASSIFIER_DEVICE": args.device,
            "VISION_EXPLAIN_DEVICE": args.device,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        if args.overlay_side:
            env["VISION_EXPLAIN_MAX_OVERLAY_SIDE"] = str(args.overlay_side)
        load = {
            "seconds": args.seconds,
            "requests": 0,
            "warmup_s": args.warmup_seconds,
            "idle_wait_s": args.wait_idle,
        }
        results: list[Result] = []
        # One service at a time: neither competes with the other for the cores.
        with service("classifier_svc", "classifier_svc", "VISION_CLASSIFIER_", env, Path(tmp)) as svc:
            calls, close = grpc_calls(svc.address, images, args.concurrency)
            results.append(
                run_load("classify", "classifier_svc Classify", calls, pids={"svc": svc.pid}, **load)
            )
            close()
        with service("explain_svc", "explain_svc", "VISION_EXPLAIN_", env, Path(tmp)) as svc:
            for key, label, method, layer, _ in PHASES:
                calls, close = explain_calls(svc.address, images, args.concurrency, method, layer)
                results.append(run_load(key, f"explain_svc {label}", calls, pids={"svc": svc.pid}, **load))
                close()
    print("\n" + results_table(results))
    base = results[0].throughput
    print("\n| explain phase | images/s | ratio to classify | target | met |\n|---|---|---|---|---|")
    for (_key, label, *_rest, target), result in zip(PHASES, results[1:], strict=True):
        ratio = result.throughput / base if base else 0.0
        met = "-" if target is None else ("yes" if ratio >= target else "no")
        print(
            f"| {label} | {fmt(result.throughput)} | {ratio:.2f}x | "
            f"{'reported' if target is None else f'>= {target}x'}"
            f" | {met} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
