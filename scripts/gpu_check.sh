#!/usr/bin/env bash
# The GPU check. By default its torch-only core (benchmarks/gpu_core.py: ResNet-18/50 two-view steps at 32 and
# 224 px with the AdaDim objective, bf16 against fp32, SyncBatchNorm over NCCL, DeepSpeed ZeRO-2/3 steps when
# DeepSpeed imports), which runs on a bare CUDA machine with the working tree alone; within 8 minutes on one GPU.
#   bash scripts/gpu_check.sh                 # on a GPU
#   bash scripts/gpu_check.sh --device cpu    # tiny shapes on CPU: the script itself, checked by the test suite
#   bash scripts/gpu_check.sh --full          # the whole service (Ray, FFCV ToDevice, NCCL, MLflow, DeepSpeed):
#                                             # DDP, ZeRO-2 and ZeRO-3 jobs, for the project's Docker image
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ "${1:-}" = "--full" ]; then
    shift
    exec timeout 540 "$PYTHON" benchmarks/gpu_check.py "$@"
fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 480 "$PYTHON" benchmarks/gpu_core.py "$@"
