"""The classifier benchmark's report: ratios service/bare against the targets, where the time goes."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.harness.load import Result
from benchmarks.harness.report import (
    contention_warning,
    errors_report,
    markdown_table,
    met_cell,
    ratio,
    results_table,
)

# classifier_svc on its default runtime (auto: OpenVINO on the CPU) vs the eager PyTorch app (issue 15).
CPU_TARGETS = {"classifier_svc": 2.0, "gateway": 0.8}
GPU_TARGET_BATCHED = 0.8


def ratio_rows(by_key: dict[str, Result], equal_conc: float, gpu: bool) -> list[dict[str, Any]]:
    """service / bare for S and G against each bare row, with the targets; plus a CPU-normalised ratio."""
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
            value = ratio(svc, comp)
            met = None if target is None else value >= target
            rows.append(
                {
                    "service": svc_name,
                    "versus": comp_name,
                    "ratio": round(value, 3),
                    "target": target,
                    "met": met,
                }
            )
        bare_cpu = [v for k in ("D1", "D2") if (v := cpu_ms_per_image(by_key[k], service_side=False))]
        svc_cpu = cpu_ms_per_image(by_key[svc_key], service_side=True)
        if svc_cpu and bare_cpu:
            rows.append(
                {
                    "service": svc_name,
                    "versus": "bare at equal concurrency (D), CPU-normalised: bare CPU ms/image / "
                    "service-side CPU ms/image (less sensitive to other load)",
                    "ratio": round(float(np.mean(bare_cpu)) / svc_cpu, 3),
                    "target": None,
                    "met": None,
                }
            )
    if "PN" in by_key and "P" in by_key:
        rows.append(
            {
                "service": "decode+preprocess",
                "versus": "one thread (P): one thread per core (PN), the GIL released while Pillow works",
                "ratio": round(ratio(by_key["PN"].throughput, by_key["P"].throughput), 3),
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
    return markdown_table(
        ("service", "versus", "ratio", "target", "met"),
        "llrrl",
        (
            (
                row["service"],
                row["versus"],
                f"{row['ratio']:.2f}x",
                "-" if row["target"] is None else f">= {row['target']:.2f}x",
                "-" if row["met"] is None else met_cell(row["ratio"], row["target"]),
            )
            for row in rows
        ),
    )


def profile_row(r: Result) -> tuple[object, ...]:
    cpu = ", ".join(f"{k} {v * 1000 / max(r.images, 1):.1f}" for k, v in r.cpu_s.items()) or "-"
    if not r.timings:
        return (r.key, "-", "-", "-", "-", "-", "-", "-", cpu)

    def col(name: str) -> np.ndarray:
        return np.array([x[name] for x in r.timings])

    per_image = float(np.mean(col("inference_ms") / np.maximum(col("batch_size"), 1)))
    overhead = (r.percentile(50) or 0.0) - float(np.median(col("total_ms")))
    return (
        r.key,
        f"{col('decode_ms').mean():.1f}",
        f"{col('queue_ms').mean():.1f}",
        f"{col('inference_ms').mean():.1f}",
        f"{per_image:.1f}",
        f"{col('batch_size').mean():.2f}",
        f"{col('total_ms').mean():.1f}",
        f"{overhead:.1f}",
        cpu,
    )


def profile_table(results: list[Result]) -> str:
    """Where the time went (server timing fields, ms) and CPU ms per image per process."""
    header = (
        "#",
        "decode+prep ms",
        "queue ms",
        "batch inference ms",
        "inference ms/image",
        "mean batch",
        "server total ms",
        "client p50 - server p50 ms",
        "CPU ms/image by process",
    )
    return markdown_table(header, "lrrrrrrrl", (profile_row(r) for r in results))


def print_report(results: list[Result], ratios: list[dict[str, Any]], n: int) -> str:
    """Print the tables; returns the contention warning ("" when none)."""
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
        "\nTargets: CPU classifier_svc (default runtime) >= 2x and gateway >= 0.8x of eager bare at equal "
        "concurrency (D); "
        "GPU classifier_svc (dynamic batching) >= 0.8x of bare forward at max batch (B)."
    )
    print("\n## Where the time goes (server timing fields, means; CPU per image by process)\n")
    print(profile_table(results))
    errors = errors_report(results)
    if errors:
        print(f"\n{errors}")
    return warning
