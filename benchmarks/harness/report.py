"""The report: markdown tables, ratios against targets, the command line, JSON output."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.load import Result


def command_line() -> str:
    """How this benchmark was started, for the top of the report."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float, base: float) -> float:
    return value / base if base > 0 else 0.0


def target_cell(target: float | None, *, reported: str = "-") -> str:
    return reported if target is None else f">= {target:g}x"


def met_cell(value: float, target: float | None) -> str:
    return "-" if target is None else ("**yes**" if value >= target else "**NO**")


def markdown_table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; ``align`` has one letter per column: ``l`` (left) or ``r`` (right)."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: Sequence[Result]) -> str:
    """One row per measured phase: throughput, latency percentiles, errors, load from other processes."""
    return markdown_table(
        ("#", "what", "clients", "batch", "images/s", "p50 ms", "p99 ms", "n", "errors", "other load, cores"),
        "llrrrrrrrr",
        (
            (
                r.key,
                r.label,
                r.concurrency,
                r.batch,
                f"{r.throughput:.1f}",
                fmt(r.percentile(50)),
                fmt(r.percentile(99)),
                r.images,
                r.errors,
                fmt(r.other_cores, 2),
            )
            for r in results
        ),
    )


def contention_warning(results: Sequence[Result], threshold: float = 0.2) -> str:
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


def errors_report(results: Sequence[Result]) -> str:
    return "\n".join(f"{r.key}: {r.errors} errors, first: {r.first_error}" for r in results if r.errors)


def write_json(path: Path | None, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` (nothing when None) and say so."""
    if path is None:
        return
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
