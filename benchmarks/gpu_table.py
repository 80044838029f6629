"""The GPU suite's one table: every result of `benchmarks/gpu_suite.sh` against its baseline and target.

Reads what the suite left in its output directory (each file optional: a step that failed or ran out of time
gives a FAIL row naming its log):

* ``steps.tsv``: one line per step, ``name<TAB>exit status (or "skipped")<TAB>seconds``
* ``gpu.txt``: nvidia-smi's name, memory and driver line
* ``cuda-tests.xml``: pytest's JUnit report of the CUDA tests
* ``classifier.json``, ``detector.json``, ``trainer.json``: the benchmarks' ``--json`` output
* ``explain.json`` (``--json``)

    python -m benchmarks.gpu_table benchmarks/results/gpu-suite-20261207-0100

Exit status 0 when every row with a target met it and every step passed, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness.report import markdown_table
from benchmarks.trainer import TARGET_RATIO as TRAINER_TARGET


@dataclass(frozen=True)
class Row:
    service: str
    measured: str
    baseline: str
    ratio: float | None
    target: float | None
    passed: bool | None  # None: reported only
    step: str
    target_text: str = ""  # instead of ">= target x" (a target that is not a ratio)

    def cells(self, seconds: dict[str, str]) -> tuple[str, ...]:
        verdict = "-" if self.passed is None else ("pass" if self.passed else "**FAIL**")
        return (
            self.service,
            self.measured,
            self.baseline,
            "-" if self.ratio is None else f"{self.ratio:.2f}x",
            self.target_text or ("reported" if self.target is None else f">= {self.target:g}x"),
            verdict,
            seconds.get(self.step, "-"),
        )


def ratio_row(
    service: str, measured: str, baseline: str, ratio: float, target: float | None, step: str
) -> Row:
    return Row(service, measured, baseline, ratio, target, None if target is None else ratio >= target, step)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(out: Path) -> dict[str, tuple[str, str]]:
    """step name -> (exit status or "skipped", seconds)."""
    steps: dict[str, tuple[str, str]] = {}
    path = out / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                steps[parts[0]] = (parts[1], parts[2])
    return steps


def missing(service: str, step: str, steps: dict[str, tuple[str, str]]) -> Row:
    """The row of a step that left no result."""
    status = steps.get(step, ("not run", ""))[0]
    why = {"skipped": "skipped: the suite's time budget ran out", "not run": "not run"}.get(
        status, f"no result: exit {status}{' (timed out)' if status in ('124', '130', '137') else ''}"
    )
    return Row(service, f"{why}; see {step}.log", "-", None, None, False, step, "-")


def test_rows(out: Path, steps: dict[str, tuple[str, str]]) -> list[Row]:
    try:
        root = ET.parse(out / "cuda-tests.xml").getroot()
    except (OSError, ET.ParseError):
        return [missing("CUDA tests", "tests", steps)]
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, "0")) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    bad = count["failures"] + count["errors"]
    passed = count["tests"] - bad - count["skipped"]
    text = f"{passed} passed, {bad} failed, {count['skipped']} skipped"
    ok = bad == 0 and count["skipped"] == 0 and passed > 0  # on a GPU nothing may skip
    baseline = "the CPU paths, within the stated tolerances"
    return [Row("CUDA tests", text, baseline, None, None, ok, "tests", "all pass, none skipped")]


def classifier_rows(out: Path, steps: dict[str, tuple[str, str]]) -> list[Row]:
    payload = read_json(out / "classifier.json")
    if not isinstance(payload, dict):
        return [missing("classifier_svc", "classifier", steps)]
    clients = payload.get("config", {}).get("concurrency", "?")
    batch = payload.get("config", {}).get("max_batch_size", "?")
    rows = []
    for r in payload.get("ratios", []):
        if r.get("service") != "classifier_svc":
            continue
        if r.get("target") is None and not str(r.get("versus", "")).startswith(
            "bare at equal concurrency (D,"
        ):
            continue  # the benchmark's own report has the other comparisons
        measured = f"dynamic batching (max {batch}), {clients} gRPC clients"
        rows.append(ratio_row("classifier_svc", measured, r["versus"], r["ratio"], r["target"], "classifier"))
    return rows or [missing("classifier_svc", "classifier", steps)]


def explain_rows(out: Path, steps: dict[str, tuple[str, str]]) -> list[Row]:
    payload = read_json(out / "explain.json")
    phases = payload.get("ratios", []) if isinstance(payload, dict) else []
    if not phases:
        return [missing("explain_svc", "explain", steps)]
    return [
        ratio_row(
            "explain_svc", r["label"], "classifier_svc Classify", float(r["ratio"]), r["target"], "explain"
        )
        for r in phases
    ]


def detector_rows(out: Path, steps: dict[str, tuple[str, str]]) -> list[Row]:
    payload = read_json(out / "detector.json")
    summary = payload.get("summary") if isinstance(payload, dict) else None
    if not summary or len(summary) < 2:
        return [missing("detector_svc", "detector", steps)]
    bare = summary[0]["label"]
    # No GPU target in benchmarks/detector.py (its target is for the CPU): reported.
    return [ratio_row("detector_svc", r["label"], bare, r["ratio"], None, "detector") for r in summary[1:]]


def trainer_rows(out: Path, steps: dict[str, tuple[str, str]]) -> list[Row]:
    payload = read_json(out / "trainer.json")
    if not isinstance(payload, dict) or "ratio_train_images_per_s" not in payload:
        return [missing("trainer_svc", "trainer", steps)]
    target = payload.get("target", TRAINER_TARGET)
    cfg = payload.get("config", {})
    amp = ", AMP" if str(payload.get("device", "")).startswith("cuda") else ""
    what = f"{cfg.get('arch', '?')} {cfg.get('img_size', '?')} px job{amp}"
    baseline = "bare AMP loop" if payload.get("bare_amp") else "bare loop (fp32: no AMP baseline yet)"
    return [
        ratio_row("trainer_svc", f"{what}: {name}", baseline, payload[key], target, "trainer")
        for key, name in (
            ("ratio_train_images_per_s", "training images/s"),
            ("ratio_epoch_images_per_s", "epoch images/s"),
        )
    ]


def build_rows(out: Path) -> list[Row]:
    steps = read_steps(out)
    rows: list[Row] = []
    for part in (test_rows, classifier_rows, explain_rows, detector_rows, trainer_rows):
        rows += part(out, steps)
    return rows


def render(out: Path, rows: list[Row]) -> str:
    steps = read_steps(out)
    seconds = {name: f"{s}" for name, (_, s) in steps.items()}
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "unknown GPU"
    total = sum(int(s) for _, s in steps.values() if s.isdigit())
    header = ("service", "measured", "baseline", "ratio", "target", "pass/fail", "step s")
    table = markdown_table(header, "lllrrlr", (row.cells(seconds) for row in rows))
    return f"GPU suite on {gpu}; steps took {total} s in all (results in {out})\n\n{table}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the suite's output directory")
    args = parser.parse_args(argv)
    rows = build_rows(args.out)
    print(render(args.out, rows))
    failed = [row for row in rows if row.passed is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
