#!/usr/bin/env bash
# The GPU suite in one command, on a machine with an NVIDIA GPU (`make install` done): the CUDA tests
# (tests/test_cuda.py and tests/test_batch_decode.py), then the GPU benchmarks of the four services against
# their bare baselines with short phases, then ONE markdown table (benchmarks/gpu_table.py). Under 8 minutes
# on one H100/H200: every step has a time budget, and the whole run GPU_SUITE_BUDGET_S (default 470 s).
#
#   benchmarks/gpu_suite.sh                       # or: make gpu-suite
#   GPU_SUITE_OUT=/tmp/run benchmarks/gpu_suite.sh
#
# Output (logs, the benchmarks' JSON, table.md) in GPU_SUITE_OUT (default benchmarks/results/gpu-suite-<time>).
# Exit status: 0 when every test passed and every target was met, 1 otherwise, 2 when there is no GPU.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
OUT=${GPU_SUITE_OUT:-benchmarks/results/gpu-suite-$(date +%Y%m%d-%H%M%S)}
BUDGET_S=${GPU_SUITE_BUDGET_S:-470}
START=$SECONDS
export YOLO_OFFLINE=1 # Ultralytics never reaches the network (detector_svc/offline.py does the rest)

no_gpu() {
  echo "gpu_suite: $*" >&2
  echo "gpu_suite: this suite needs an NVIDIA GPU; on the CPU run \`make test\` (CI never has a GPU)." >&2
  exit 2
}

command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found (no NVIDIA driver on this machine)"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1) ||
  no_gpu "nvidia-smi failed: $gpu"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  no_gpu "torch.cuda.is_available() is False for $PY (a CPU-only torch, or a driver older than its CUDA)"

mkdir -p "$OUT"
echo "$gpu" >"$OUT/gpu.txt"
: >"$OUT/steps.tsv"
echo "gpu_suite: $gpu; python $PY; budget ${BUDGET_S} s; output in $OUT"

# `--json` and the detector's `--runtimes` are passed only where the benchmark has them.
has_option() { "$PY" -m "$1" --help 2>/dev/null | grep -q -- "$2"; }

# step NAME BUDGET_S COMMAND...: run COMMAND for at most BUDGET_S seconds (less if the run's budget is
# nearly spent; skipped under 20 s), its output in $OUT/NAME.log, its status and time in steps.tsv.
# SIGINT on time-out: the benchmarks then stop the services they started (KeyboardInterrupt, finally).
step() {
  local name=$1 budget=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if ((left < 20)); then
    printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"
    echo "== $name: skipped, ${left} s of the budget left"
    return
  fi
  ((budget <= left)) || budget=$left
  echo "== $name (at most ${budget} s; $((SECONDS - START)) s elapsed)"
  local began=$SECONDS rc
  set +e
  timeout --signal=INT --kill-after=20 "$budget" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" >>"$OUT/steps.tsv"
  echo "== $name: exit $rc after $((SECONDS - began)) s ($((SECONDS - START)) s elapsed)"
}

step tests 120 "$PY" -m pytest -q -rs -s -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" \
  tests/test_cuda.py tests/test_batch_decode.py

step classifier 95 "$PY" -m benchmarks.classifier --device cuda --concurrency 32 --seconds 5 \
  --warmup-seconds 2 --bare-seconds 3 --skip-gateway --json "$OUT/classifier.json"

step explain 80 "$PY" -m benchmarks.explain --device cuda --concurrency 16 --seconds 5 --warmup-seconds 2 --rounds 1 \
  --json "$OUT/explain.json"

detector_runtimes=()
has_option benchmarks.detector --runtimes && detector_runtimes=(--runtimes "")
step detector 80 "$PY" -m benchmarks.detector --device cuda --concurrency 16 --batch-sizes 1,16 \
  --seconds 5 --rounds 2 "${detector_runtimes[@]}" --json "$OUT/detector.json"

step trainer 95 "$PY" -m benchmarks.trainer --device cuda --arch resnet18 --img-size 112 --epochs 3 \
  --rounds 1 --workers 4 --json "$OUT/trainer.json"

echo
set +e
"$PY" -m benchmarks.gpu_table "$OUT" | tee "$OUT/table.md"
rc=${PIPESTATUS[0]}
set -e
echo
echo "gpu_suite: $((SECONDS - START)) s in all; exit $rc (0: every test passed and every target met)"
exit "$rc"
