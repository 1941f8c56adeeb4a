#!/usr/bin/env bash
# The one check to run on a machine with an NVIDIA GPU: the CUDA tests, then the quick CUDA bench,
# then the defaults file its figures set for CUDA (cuda.json: precision, each switch, replay only where its pairs
# equal eager's and it gains). Nothing here needs the internet: it runs on the device image's own python3 and
# packages, plus wheels in .whl/ where they were packed beforehand (README, "Defaults measured per device").
# Each step has its own timeout, so the whole ends within about 9 minutes and a hang in one step still leaves the
# others' output; the bench writes bench.json after each of its sections (those the defaults need first), so a
# timeout keeps the figures measured before it.
# Usage: scripts/gpu_check.sh   (OUT=folder for bench.json, cuda.json and gpu_check.log, default: the checkout;
# PY=python). Then, on the machine with the checkout: python -m bench.defaults OUT/bench.json
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-.}
mkdir -p "$OUT"
# the device image has torch, pandas, scipy and pytest but neither mlflow nor optuna: only the bench's `study`
# section needs them, and it records an error without them unless their wheels travel in .whl/ (device README)
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout is not installed there
export PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
{
    echo "== $(date -u '+%F %T') gpu_check at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || echo "no nvidia-smi"
    timeout 30 "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "device",
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE: the CUDA tests will skip")'
    echo "== the CUDA tests (pytest -m cuda), at most 120 s"
    # the tests marked cuda, in these three files only: the others import mlflow or optuna at collection
    timeout -k 10 120 "$PY" -m pytest tests/test_replay.py tests/test_bench_device.py tests/test_autotune_gpu.py \
        -m cuda -q -rs --timeout 100 -p no:cacheprovider
    tests=$?
    echo "== pytest exit $tests"
    echo "== the quick CUDA bench, at most 380 s, into $OUT/bench.json"
    timeout -k 10 380 "$PY" -m bench device --quick --out "$OUT/bench.json"
    bench=$?
    echo "== bench exit $bench (124: timed out; bench.json keeps the sections that ended)"
    echo "== the defaults these figures set, into $OUT/<kind>.json (what cyclelike/defaults/ would hold)"
    timeout -k 5 60 "$PY" -m bench.defaults "$OUT/bench.json" --out "$OUT"
    defaults=$?
    worst=$(( tests > bench ? tests : bench ))
    exit $(( worst > defaults ? worst : defaults ))
} 2>&1 | tee "$OUT/gpu_check.log"
