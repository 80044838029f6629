"""classifier_svc and gateway throughput/latency against the bare model, in one run on one machine.

Prints a markdown report (and with ``--json OUT`` writes the numbers):

* bare model rows: the service's own model wrapper (``load_for_serving(...).predict``:
  same weights, device, fp16 + channels_last on CUDA, softmax and copy back to the CPU), no gRPC, no batcher:
  forward on preprocessed tensors at batch 1 and at the max batch size; decode + preprocess alone; decode +
  preprocess + forward at batch 1 in one thread; and the same with N threads, each on its own image (what a
  hand-rolled app would do: "bare at equal concurrency", measured before and after the services).
* classifier_svc (``python -m classifier_svc`` subprocess by default) under N concurrent gRPC clients, on
  its default runtime (auto: OpenVINO on the CPU), then once per ``--runtimes`` entry (runtime:precision),
  each row with its parity figures against eager torch (max |Δlogit|, top-1 agreement on the photos).
* gateway (``python -m gateway`` subprocess in front of it) under N concurrent HTTP clients (POST /predict).
* the ratios service/bare and gateway/bare with their targets, and where the service's time goes (the
  ClassifyResponse.timing fields) and the CPU seconds each process used per request.

Every client sends a real JPEG (ultralytics' bus.jpg and zidane.jpg, scikit-image's astronaut), client i
the image i mod 3; the bare rows use the same images. The model is a seeded, randomly initialised network
with 1000 classes (speed does not depend on the weights), published to a temporary model store.

    python -m benchmarks.classifier                 # defaults: 8 clients, 15 s per load phase
    python -m benchmarks.classifier --concurrency 32 --requests 2000 --device cuda --json out.json
    python -m benchmarks.classifier --quick         # a smoke run: 2 clients, 1 s phases
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Ultralytics' photos are read from its package directory; nothing may reach the network.
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch

from benchmarks.classifier.clients import bare_calls, classifier_service, grpc_calls, http_calls
from benchmarks.classifier.report import print_report, ratio_rows
from benchmarks.classifier.runtimes import (
    CPU_DEFAULT_RUNTIME_TARGET,
    DEFAULT_RUNTIMES,
    QUICK_RUNTIMES,
    default_parity,
    runtime_rows,
    runtime_table,
)
from benchmarks.harness.inputs import NUM_CLASSES, publish_random_model, test_images
from benchmarks.harness.load import Call, Result, run_load, run_loop
from benchmarks.harness.procs import gateway_service, thread_env
from benchmarks.harness.report import command_line, write_json
from vision.choices import ARCHITECTURES
from vision.image.decode import decode_image
from vision.models.devices import resolve_device
from vision.models.store import ModelStore
from vision.serving.classifier import LoadedClassifier, load_for_serving
from vision.settings import cpu_cores


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
        help="requests per load phase, all clients together (default: --seconds)",
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
        help="torch intra-op threads in this process and the service (default: torch's default, the physical "
        "core count)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run classifier_svc inside this process (shares the GIL)"
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
        "--runtimes",
        default=None,
        metavar="R:P,...",
        help="classifier_svc once per runtime:precision, each its own row with its parity figures (default "
        f"{DEFAULT_RUNTIMES}; --quick: {QUICK_RUNTIMES}; empty: none)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the classifier_svc subprocess, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 clients, 1 s phases, 0.5 s warm-up, max batch 4"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.requests = 2, 1.0, 0
        args.warmup_seconds, args.bare_seconds, args.max_batch_size = 0.5, 1.0, args.max_batch_size or 4
    if args.runtimes is None:
        args.runtimes = QUICK_RUNTIMES if args.quick else DEFAULT_RUNTIMES
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes KEY=VALUE")
    return args


def print_setup(args: argparse.Namespace, device: torch.device) -> None:
    gpu = device.type == "cuda"
    cores = os.cpu_count() or 1
    amount = f"{args.requests} requests" if args.requests else f"{args.seconds:g} s"
    print(f"$ {command_line()}\n")
    print(
        f"- machine: {platform.machine()} {cores} CPU cores, device **{device}**"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if gpu else ''}; torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    delay = "default" if args.max_batch_delay_ms is None else args.max_batch_delay_ms
    print(
        f"- model: {args.arch}, {NUM_CLASSES} classes, random weights (seed 0), "
        f"{'float16 + channels_last' if gpu else 'float32'}; service max batch {args.max_batch_size}, "
        f"batch delay {delay} ms"
        + (f"; extra service env {' '.join(args.service_env)}" if args.service_env else "")
    )
    print(
        f"- threads: torch intra-op threads = {args.threads} in this process (bare rows) and in "
        f"classifier_svc (OMP_NUM_THREADS/MKL_NUM_THREADS={args.threads}); classifier_svc "
        f"{'in this process' if args.in_process else 'and gateway run as subprocesses'}; the service, "
        f"the gateway and the load generator (this process) share the machine's {cores} cores"
    )
    print(
        f"- load phases: {args.concurrency} clients, {args.warmup_seconds:g} s warm-up, then {amount}; "
        f"single-thread bare rows {args.bare_seconds:g} s each\n",
        flush=True,
    )


def show(result: Result) -> Result:
    print(f"  {result.key}: {result.throughput:.1f} images/s", flush=True)
    return result


def bare_rows(args: argparse.Namespace, model: LoadedClassifier, images: list[bytes]) -> list[Result]:
    """A, B: forward on preprocessed tensors at batch 1 and max batch; P: decode + preprocess only;
    C: decode + preprocess + forward at batch 1 in one thread."""
    results: list[Result] = []
    tensors = [model.preprocessing(decode_image(data)) for data in images]
    common: dict[str, Any] = {"seconds": args.bare_seconds, "warmup_s": 1.0, "idle_wait_s": args.wait_idle}
    for key, bs in (("A", 1), ("B", args.max_batch_size)):
        batch = torch.stack([tensors[i % len(tensors)] for i in range(bs)])

        def forward(b: torch.Tensor = batch) -> int:
            model.predict(b)
            return int(b.shape[0])

        results.append(
            show(
                run_loop(
                    key, f"bare forward, preprocessed tensors, batch {bs}", forward, batch=str(bs), **common
                )
            )
        )
    counter = iter(range(1 << 62))

    def decode_only() -> int:
        model.preprocessing(decode_image(images[next(counter) % len(images)]))
        return 1

    def full_one() -> int:
        data = images[next(counter) % len(images)]
        model.predict(model.preprocessing(decode_image(data)).unsqueeze(0))
        return 1

    label_p = "decode+preprocess only (no model), 1 thread"
    p_common = {**common, "seconds": min(args.bare_seconds, 3.0), "warmup_s": 0.5}
    results.append(show(run_loop("P", label_p, decode_only, batch="-", **p_common)))
    # Pillow decodes and resamples outside the GIL: one thread per core should scale with the cores.
    cores = cpu_cores()
    label_pn = f"decode+preprocess only (no model), {cores} threads (one per core: the GIL is released)"
    pn_calls = [lambda i=i: decode_calls(model, images, i) for i in range(cores)]
    pids = {"bench (decode threads)": os.getpid()}  # its own threads: not "other load"
    results.append(show(run_load("PN", label_pn, pn_calls, batch="-", pids=pids, **p_common)))
    label_c = "bare decode+preprocess+forward, batch 1, 1 thread"
    results.append(show(run_loop("C", label_c, full_one, batch="1", **common)))
    return results


def decode_calls(model: LoadedClassifier, images: list[bytes], i: int) -> None:
    model.preprocessing(decode_image(images[i % len(images)]))


def load_phase(
    args: argparse.Namespace, key: str, label: str, calls: list[Call], pids: dict[str, int]
) -> Result:
    """One load phase of ``--concurrency`` clients with the run's amount, warm-up and idle wait."""
    return show(
        run_load(
            key,
            label,
            calls,
            seconds=args.seconds,
            requests=args.requests,
            warmup_s=args.warmup_seconds,
            idle_wait_s=args.wait_idle,
            pids=pids,
        )
    )


def equal_concurrency(
    args: argparse.Namespace, key: str, when: str, model: LoadedClassifier, images: list[bytes]
) -> Result:
    n = args.concurrency
    label = f"bare at equal concurrency ({when}): {n} threads, each decode+preprocess+forward batch 1"
    return load_phase(args, key, label, bare_calls(model, images, n), {"bench (bare model)": os.getpid()})


def service_rows(
    args: argparse.Namespace, store: ModelStore, model_name: str, images: list[bytes], tmp: Path
) -> list[Result]:
    """S: classifier_svc under N gRPC clients; G: the gateway in front of it under N HTTP clients."""
    n = args.concurrency
    results: list[Result] = []
    env = {**thread_env(args.threads), "YOLO_OFFLINE": "1"}
    with classifier_service(args, store.root, env, tmp, model_name) as svc:
        pids = {"bench (load generator)": os.getpid()}
        if not args.in_process:
            pids["classifier_svc"] = svc.pid
        calls, close = grpc_calls(svc.address, images, n)
        try:
            label = f"classifier_svc, default runtime (auto), {n} gRPC clients"
            results.append(load_phase(args, "S", label, calls, pids))
        finally:
            close()
        if args.skip_gateway:
            return results
        with gateway_service({**env, "VISION_GATEWAY_CLASSIFIER_ADDR": svc.address}, tmp) as gw:
            pids["gateway"] = gw.pid
            calls, close = http_calls(gw.address, images, n)
            try:
                results.append(load_phase(args, "G", f"gateway POST /predict, {n} HTTP clients", calls, pids))
            finally:
                close()
    return results


def json_payload(
    args: argparse.Namespace,
    device: torch.device,
    names: list[str],
    results: list[Result],
    equal_conc: float,
    ratios: list[dict[str, Any]],
    warning: str,
) -> dict[str, Any]:
    gpu = device.type == "cuda"
    return {
        "command": command_line(),
        "config": {
            "concurrency": args.concurrency,
            "seconds": None if args.requests else args.seconds,
            "requests": args.requests or None,
            "warmup_seconds": args.warmup_seconds,
            "max_batch_size": args.max_batch_size,
            "max_batch_delay_ms": args.max_batch_delay_ms,
            "arch": args.arch,
            "device": str(device),
            "threads": args.threads,
            "in_process": args.in_process,
            "images": names,
        },
        "environment": {
            "cpu_count": os.cpu_count() or 1,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if gpu else None,
        },
        "results": [r.summary() for r in results],
        "bare_equal_concurrency_images_per_s": round(equal_conc, 3),
        "ratios": ratios,
        "contention_warning": warning or None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.device = str(device)
    args.max_batch_size = args.max_batch_size or (64 if device.type == "cuda" else 16)
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print_setup(args, device)

    named = test_images()
    images = [data for _, data in named]
    with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
        store = ModelStore(Path(tmp) / "models")
        version = publish_random_model(store, args.arch)
        model = load_for_serving(version, device, half=True)
        results = bare_rows(args, model, images)
        results.append(equal_concurrency(args, "D1", "before", model, images))
        results += service_rows(args, store, version.name, images, Path(tmp))
        env = {**thread_env(args.threads), "YOLO_OFFLINE": "1"}
        runtimes = runtime_rows(args, version, images, env, Path(tmp)) if device.type == "cpu" else []
        parity = default_parity(version, images, Path(tmp)) if runtimes else None
        results.append(equal_concurrency(args, "D2", "after", model, images))

    by_key = {r.key: r for r in results}
    equal_conc = max(by_key["D1"].throughput, by_key["D2"].throughput)
    ratios = ratio_rows(by_key, equal_conc, device.type == "cuda")
    warning = print_report(results, ratios, args.concurrency)
    if runtimes:
        print("\n## Runtimes (classifier_svc, CPU)\n")
        print(runtime_table(runtimes, equal_conc, by_key.get("S"), parity))
        print(
            "\nParity: the runtime's logits and probabilities (with its preprocessing) vs eager torch's "
            "on the exact pipeline, on the benchmark's photos, loaded as the service loads it. x eager: "
            "images/s over bare eager torch at equal concurrency (D, best of D1/D2); "
            f"target for the default runtime: >= {CPU_DEFAULT_RUNTIME_TARGET:g}x."
        )
    if args.json is not None:
        payload = json_payload(
            args, device, [name for name, _ in named], results, equal_conc, ratios, warning
        )
        payload["runtimes"] = [row.summary() for row in runtimes]
        if parity is not None:
            keys = ("served_as", "max_abs_logit_diff", "max_abs_prob_diff", "top1_agreement")
            payload["default_parity"] = dict(zip(keys, parity, strict=True))
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
