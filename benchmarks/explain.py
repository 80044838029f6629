"""explain_svc throughput against classifier_svc for the same model, in one run on one machine.

Both services run as subprocesses on one model store holding a seeded random ResNet18 (1000 classes); the
same N gRPC clients send the same real photos to each in turn. Printed: images/s and latency per phase, and
the ratio explain / classify with the targets (CAM and Grad-CAM at the default layer >= 0.8x; CAM with the
largest overlay a request may ask for, and Grad-CAM and Grad-CAM++ at a middle layer reported).

    python -m benchmarks.explain                        # 8 clients, 3 interleaved rounds of 15 s phases
    python -m benchmarks.explain --overlay-side 1024    # VISION_EXPLAIN_OVERLAY_SIDE (default 640)
    python -m benchmarks.explain --quick                # a smoke run: 2 clients, 1 s phases
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.classifier.clients import grpc_calls
from benchmarks.harness.inputs import publish_random_model, test_images
from benchmarks.harness.load import RPC_TIMEOUT_S, Call, Result, grpc_channels, run_load, timing_fields
from benchmarks.harness.procs import grpc_service, thread_env
from benchmarks.harness.report import command_line, fmt, markdown_table, ratio, results_table, write_json
from vision.models.store import ModelStore
from vision.v1 import explainer_pb2, explainer_pb2_grpc

FULL_SIZE = 2048  # the largest overlay_max_side a request may ask for (VISION_EXPLAIN_MAX_OVERLAY_SIDE)

# key, label, method, layer, overlay_max_side (0: the service's default), target (None: reported only)
PHASES: tuple[tuple[str, str, explainer_pb2.CamMethod, str, int, float | None], ...] = (
    ("cam", "CAM, last conv block (layer4)", explainer_pb2.CAM_METHOD_CAM, "", 0, 0.8),
    ("gradcam", "Grad-CAM, last conv block (layer4)", explainer_pb2.CAM_METHOD_GRAD_CAM, "", 0, 0.8),
    (
        "cam_full_size",
        f"CAM, last conv block, overlay_max_side {FULL_SIZE} (the photo's own size)",
        explainer_pb2.CAM_METHOD_CAM,
        "",
        FULL_SIZE,
        None,
    ),
    ("gradcam_l3", "Grad-CAM, middle layer (layer3)", explainer_pb2.CAM_METHOD_GRAD_CAM, "layer3", 0, None),
    (
        "gradcampp_l3",
        "Grad-CAM++, middle layer (layer3)",
        explainer_pb2.CAM_METHOD_GRAD_CAM_PLUS_PLUS,
        "layer3",
        0,
        None,
    ),
)


def explain_calls(
    address: str,
    images: list[bytes],
    n: int,
    method: explainer_pb2.CamMethod,
    layer: str,
    overlay_max_side: int = 0,
) -> tuple[list[Call], Callable[[], None]]:
    """One channel per client; client i sends image i mod len(images) with ``method`` at ``layer``."""
    channels = grpc_channels(address, n)

    def make(i: int) -> Call:
        stub = explainer_pb2_grpc.ExplainerStub(channels[i])
        request = explainer_pb2.ExplainRequest(
            image=images[i % len(images)], method=method, layer=layer, overlay_max_side=overlay_max_side
        )

        def call() -> dict[str, float]:
            return timing_fields(stub.Explain(request, timeout=RPC_TIMEOUT_S).timing)

        return call

    def close() -> None:
        for channel in channels:
            channel.close()

    return [make(i) for i in range(n)], close


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="load phase length (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each service (default: all)")
    parser.add_argument("--overlay-side", type=int, default=0, help="VISION_EXPLAIN_OVERLAY_SIDE")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all phases (default 3)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 clients, 1 s phases, 0.5 s warm-up"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.warmup_seconds, args.rounds = 2, 1.0, 0.5, 1
    return args


def measure(
    args: argparse.Namespace, store: ModelStore, images: list[bytes], tmp: Path
) -> list[list[Result]]:
    """``args.rounds`` rounds, each the classify phase, then one phase per entry of PHASES. Both services
    stay up for the run, but only the one under load works (the other idles), so neither competes with the
    other for the cores; interleaving the rounds spreads slow drifts of the machine over both."""
    env = {
        **thread_env(args.threads),
        "VISION_MODEL_DIR": str(store.root),
        "VISION_CLASSIFIER_FETCH_PRETRAINED": "false",
        "VISION_CLASSIFIER_DEVICE": args.device,
        "VISION_EXPLAIN_DEVICE": args.device,
    }
    if args.overlay_side:
        env["VISION_EXPLAIN_OVERLAY_SIDE"] = str(args.overlay_side)
        env["VISION_EXPLAIN_MAX_OVERLAY_SIDE"] = str(max(args.overlay_side, FULL_SIZE))
    load: dict[str, Any] = {
        "seconds": args.seconds,
        "warmup_s": args.warmup_seconds,
        "idle_wait_s": args.wait_idle,
    }
    rounds: list[list[Result]] = []
    with (
        grpc_service("classifier_svc", "VISION_CLASSIFIER_PORT", env, tmp) as classifier,
        grpc_service("explain_svc", "VISION_EXPLAIN_PORT", env, tmp) as explainer,
    ):
        for number in range(1, args.rounds + 1):
            tag = f" (round {number})" if args.rounds > 1 else ""
            calls, close = grpc_calls(classifier.address, images, args.concurrency)
            results = [
                run_load(
                    "classify", f"classifier_svc Classify{tag}", calls, pids={"svc": classifier.pid}, **load
                )
            ]
            close()
            for key, label, method, layer, side, _ in PHASES:
                calls, close = explain_calls(explainer.address, images, args.concurrency, method, layer, side)
                pids = {"svc": explainer.pid}
                results.append(run_load(key, f"explain_svc {label}{tag}", calls, pids=pids, **load))
                close()
            rounds.append(results)
    return rounds


def ratios(rounds: list[list[Result]]) -> list[dict[str, Any]]:
    """Per phase: the median images/s over the rounds, and the median of the per-round ratios explain /
    classify (each against the classify phase of its own round), with the targets."""
    rows = []
    for index, (key, label, _method, _layer, _side, target) in enumerate(PHASES, start=1):
        per_round = [ratio(r[index].throughput, r[0].throughput) for r in rounds]
        value = float(np.median(per_round))
        rows.append(
            {
                "phase": key,
                "label": label,
                "images_per_s": round(float(np.median([r[index].throughput for r in rounds])), 3),
                "ratio": round(value, 3),
                "ratios": [round(v, 3) for v in per_round],
                "target": target,
                "met": None if target is None else value >= target,
            }
        )
    return rows


def ratios_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["label"],
            fmt(r["images_per_s"]),
            f"{r['ratio']:.2f}x"
            + (f" ({', '.join(f'{v:.2f}' for v in r['ratios'])})" if len(r["ratios"]) > 1 else ""),
            "reported" if r["target"] is None else f">= {r['target']}x",
            "-" if r["met"] is None else ("yes" if r["met"] else "no"),
        )
        for r in rows
    ]
    columns = ("explain phase", "images/s (median)", "ratio to classify (median; per round)", "target", "met")
    return markdown_table(columns, "lllll", body)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.threads = args.threads or torch.get_num_threads()
    print(f"$ {command_line()}\n")
    print(
        f"- {os.cpu_count()} CPU cores, device {args.device}, torch threads per service {args.threads}; "
        f"{args.concurrency} gRPC clients; {args.rounds} rounds of {args.seconds:g} s per phase; resnet18, "
        "1000 classes"
    )
    images = [data for _, data in test_images()]
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        store = ModelStore(Path(tmp) / "models")
        publish_random_model(store, "resnet18")
        rounds = measure(args, store, images, Path(tmp))
    print("\n" + results_table([result for results in rounds for result in results]))
    rows = ratios(rounds)
    print("\n" + ratios_table(rows))
    write_json(
        args.json,
        {
            "command": command_line(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rounds": [[r.summary() for r in results] for results in rounds],
            "ratios": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
