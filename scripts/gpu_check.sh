#!/usr/bin/env bash
# The GPU path in one command (at most 8 minutes on one GPU): short DDP bf16, ZeRO-2 and ZeRO-3 jobs with FFCV
# ToDevice and NCCL, then benchmarks/gpu_step.py; prints a pass/fail table with images/s and peak memory.
# Needs an environment with a CUDA build of torch (the project's Docker image); extra arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec timeout 540 "$PYTHON" benchmarks/gpu_check.py "$@"
