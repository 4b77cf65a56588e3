#!/usr/bin/env bash
# The GPU check, in one step (issue 20): the device tests with CUDA present, then a
# 16-candidate ResNet-20 search on CUDA with 4 actors at num_gpus 0.25, in fp32 and in
# bf16, printing candidates per minute, latency, accuracy and seconds per stage.
# Under 8 minutes on one GPU. On a machine without CUDA it runs the device-choice tests
# on the CPU and says that it skipped CUDA.
#
#   benchmarks/gpu_check.sh [--shared ../shared]     (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
tests=(tests/test_devices.py tests/test_data_sources.py)
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: CUDA is not available here: SKIPPED the CUDA tests and the CUDA search; running the device-choice tests on the CPU"
    "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}"
    echo "gpu_check: done in $(( $(date +%s) - start )) s (CPU only: CUDA skipped)"
    exit 0
fi
"$PY" -c 'import torch; print("gpu_check: CUDA", torch.version.cuda, "on", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0))'
"$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" tests/test_evaluator.py
timeout 420 "$PY" benchmarks/gpu_search.py --trials 16 --actors 4 --num-gpus 0.25 --precisions fp32 bf16 "$@"
echo "gpu_check: done in $(( $(date +%s) - start )) s"
