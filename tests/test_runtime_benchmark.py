"""`python -m benchmarks.classifier --quick` runs: the default runtime, eager bare and each runtime row with
its parity figures, side by side in one run (the numbers of a smoke run mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_the_classifier_benchmarks_quick_run_prints_each_runtime_with_its_parity(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISION_CLASSIFIER_RUNTIME")}
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.classifier", "--quick", "--skip-gateway", "--json", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## Runtimes (classifier_svc, CPU)" in done.stdout
    rows = {(r["runtime"], r["precision"]): r for r in json.loads(out.read_text())["runtimes"]}
    assert set(rows) == {("torch", "fp32"), ("openvino", "fp32")}
    assert all(r["preprocess"] == "exact" and r["max_abs_prob_diff"] <= 1e-3 for r in rows.values())
    assert rows[("openvino", "fp32")]["served_as"] == "openvino fp32"
    assert rows[("openvino", "fp32")]["max_abs_logit_diff"] <= 1e-3
    assert rows[("torch", "fp32")]["max_abs_logit_diff"] == 0
    assert all(r["top1_agreement"] == 1.0 and r["images_per_s"] > 0 for r in rows.values())
