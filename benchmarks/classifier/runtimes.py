"""The classifier benchmark's runtime rows: classifier_svc once per runtime and precision, each with how far
its answers are from eager torch on the benchmark's photos (max |Δlogit|, top-1 agreement)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.classifier.clients import classifier_service, grpc_calls
from benchmarks.harness.load import Result, run_load
from benchmarks.harness.report import fmt, markdown_table, ratio
from vision.image.decode import decode_image
from vision.models.store import ModelVersion
from vision.serving.runtimes import RuntimeOptions

DEFAULT_RUNTIMES = (
    "torch:fp32,openvino:fp32,openvino:fp32:fast,openvino:bf16,openvino:bf16:fast,openvino:fp16,"
    "onnxruntime:fp32"
)
QUICK_RUNTIMES = "torch:fp32,openvino:fp32"
# Issue 15: the default runtime on the CPU serves at least twice what the eager PyTorch app does.
CPU_DEFAULT_RUNTIME_TARGET = 2.0


@dataclass(frozen=True)
class RuntimeRow:
    runtime: str
    precision: str
    preprocess: str  # VISION_CLASSIFIER_PREPROCESS: exact or fast
    result: Result
    served_as: str  # what the service's loader chose ("openvino fp32", or "torch fp32 (fallback: ...)")
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    top1_agreement: float

    def summary(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "preprocess": self.preprocess,
            "served_as": self.served_as,
            "images_per_s": round(self.result.throughput, 3),
            "service_cpu_ms_per_image": service_cpu_ms(self.result),
            "other_cores": self.result.other_cores,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "max_abs_prob_diff": self.max_abs_prob_diff,
            "top1_agreement": self.top1_agreement,
        }


def parse_runtimes(text: str) -> list[tuple[str, str, str]]:
    """``"openvino:bf16:fast,torch"`` -> [("openvino", "bf16", "fast"), ("torch", "fp32", "exact")]."""
    rows = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        runtime, precision, preprocess = [*item.split(":"), "", ""][:3]
        rows.append((runtime, precision or "fp32", preprocess or "exact"))
    return rows


def parity_on_photos(
    version: ModelVersion, images: list[bytes], runtime: str, precision: str, preprocess: str, cache: Path
) -> tuple[str, float, float, float]:
    """(served as, max |Δlogit|, max |Δprobability|, top-1 agreement) of ``runtime`` at ``precision`` with
    ``preprocess`` against eager torch fp32 on the exact pipeline, on the benchmark's photos, loaded as the
    service loads it; ``precision`` auto resolves as the service's default does."""
    options = RuntimeOptions.resolve(runtime, torch.device("cpu"), precision, cache, 1e-3, auto_bf16=True)
    return parity_with_options(version, images, options, preprocess)


def parity_with_options(
    version: ModelVersion, images: list[bytes], options: RuntimeOptions, preprocess: str
) -> tuple[str, float, float, float]:
    """`parity_on_photos` for resolved ``options``."""
    from vision.serving.classifier import load_for_serving

    loaded = load_for_serving(version, torch.device("cpu"), runtime=options)
    prep = loaded.preprocessing
    exact = torch.stack([prep(decode_image(data)) for data in images])
    if preprocess == "fast":
        batch = torch.stack([prep.fast(decode_image(data, min_side=prep.resize_size)) for data in images])
    else:
        batch = exact
    with torch.inference_mode():
        reference = loaded.module(exact).float()
        logits = loaded.runner(batch)[0] if loaded.runner is not None else loaded.module(batch).float()
    served = f"{loaded.served_as.runtime} {loaded.served_as.precision}"
    if loaded.served_as.fallback:
        served += f" (fallback: {loaded.served_as.fallback})"
    agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    prob_diff = float((torch.softmax(logits, 1) - torch.softmax(reference, 1)).abs().max())
    return served, float((logits - reference).abs().max()), prob_diff, agreement


def runtime_rows(
    args: argparse.Namespace,
    version: ModelVersion,
    images: list[bytes],
    env: dict[str, str],
    tmp: Path,
) -> list[RuntimeRow]:
    """R-<runtime>-<precision>[-fast]: classifier_svc with VISION_CLASSIFIER_RUNTIME, _PRECISION and
    _PREPROCESS set; N clients."""
    rows = []
    n = args.concurrency
    for runtime, precision, preprocess in parse_runtimes(args.runtimes):
        served, diff, prob_diff, agreement = parity_on_photos(
            version, images, runtime, precision, preprocess, tmp / "parity-cache"
        )
        key = f"R-{runtime}-{precision}" + ("-fast" if preprocess == "fast" else "")
        service_env = {
            **env,
            "VISION_CLASSIFIER_RUNTIME": runtime,
            "VISION_CLASSIFIER_PRECISION": precision,
            "VISION_CLASSIFIER_PREPROCESS": preprocess,
            "VISION_CLASSIFIER_RUNTIME_CACHE_DIR": str(tmp / "runtime-cache"),
        }
        with classifier_service(args, version.path.parents[1], service_env, tmp, version.name) as svc:
            calls, close = grpc_calls(svc.address, images, n)
            try:
                result = run_load(
                    key,
                    f"classifier_svc, RUNTIME={runtime} PRECISION={precision} PREPROCESS={preprocess}, "
                    f"{n} gRPC clients",
                    calls,
                    seconds=args.seconds,
                    requests=args.requests,
                    warmup_s=args.warmup_seconds,
                    idle_wait_s=args.wait_idle,
                    pids={"bench (load generator)": os.getpid(), "classifier_svc": svc.pid},
                )
            finally:
                close()
        print(f"  {result.key}: {result.throughput:.1f} images/s (served as {served})", flush=True)
        rows.append(RuntimeRow(runtime, precision, preprocess, result, served, diff, prob_diff, agreement))
    return rows


def default_parity(version: ModelVersion, images: list[bytes], tmp: Path) -> tuple[str, float, float, float]:
    """`parity_on_photos` of classifier_svc's default settings (runtime and precision auto, exact)."""
    return parity_on_photos(version, images, "auto", "auto", "exact", tmp / "parity-cache")


def runtime_table(
    rows: list[RuntimeRow],
    eager: float,
    default: Result | None,
    default_parity: tuple[str, float, float, float] | None = None,
) -> str:
    """Each runtime's throughput, latency, ratio to eager torch at equal concurrency (D) and parity."""
    header = (
        "row",
        "runtime",
        "precision",
        "preprocess",
        "served as",
        "images/s",
        "p50 ms",
        "p99 ms",
        "x eager (D)",
        "service CPU ms/image",
        "other load, cores",
        "max |Δlogit|",
        "max |Δprob|",
        "top-1 agreement",
    )
    body: list[tuple[object, ...]] = []
    if default is not None:
        served, diff, prob_diff, agreement = default_parity or ("-", float("nan"), float("nan"), float("nan"))
        body.append(
            (
                default.key,
                "auto (default)",
                "auto",
                "exact",
                served,
                fmt(default.throughput),
                fmt(default.percentile(50)),
                fmt(default.percentile(99)),
                f"**{ratio(default.throughput, eager):.2f}x**",
                fmt(service_cpu_ms(default)),
                fmt(default.other_cores, 2),
                f"{diff:.2g}",
                f"{prob_diff:.2g}",
                f"{agreement:.0%}",
            )
        )
    for row in rows:
        r = row.result
        body.append(
            (
                r.key,
                row.runtime,
                row.precision,
                row.preprocess,
                row.served_as,
                fmt(r.throughput),
                fmt(r.percentile(50)),
                fmt(r.percentile(99)),
                f"{ratio(r.throughput, eager):.2f}x",
                fmt(service_cpu_ms(r)),
                fmt(r.other_cores, 2),
                f"{row.max_abs_logit_diff:.2g}",
                f"{row.max_abs_prob_diff:.2g}",
                f"{row.top1_agreement:.0%}",
            )
        )
    return markdown_table(header, "lllllrrrrrrrrr", body)


def service_cpu_ms(result: Result) -> float | None:
    """CPU milliseconds classifier_svc used per image (less sensitive to other load than images/s)."""
    cpu = result.cpu_s.get("classifier_svc")
    return 1000 * cpu / result.images if cpu is not None and result.images else None
