#!/usr/bin/env bash
# Hyperflows (controller, preset paper) and OCSPruner (one cycle) on the shared CIFAR-10 ResNet-20
# at the papers' settings when a GPU is at hand; on a CPU machine the `short` preset, and it says so.
# Time-boxed: SEEDS_TIMEOUT seconds in all (default 540). Extra arguments go to seeds_gpu.py
# (e.g. --pruning-epochs 50 --regrowth-epochs 80 --ocs-epochs 100, --quick).
#   benchmarks/seeds_gpu.sh [--shared ../shared] [ARGS...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-$root/.venv/bin/python}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "seeds_gpu.sh: GPU found: papers' settings (hyperflows preset paper, OCS mode one_cycle)"
else
  echo "seeds_gpu.sh: no GPU: running the short preset on the CPU (not the papers' settings)"
fi
exec timeout --signal=INT "${SEEDS_TIMEOUT:-540}" "$py" "$here/seeds_gpu.py" "$@"
