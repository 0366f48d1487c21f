#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded defaults: writes the Fashion-MNIST .beton files
# if absent, trains configs/fmnist_demo.yaml (NT-Xent: the tuned comparison's best-measured objective, RESULTS.md)
# on a local Ray instance, prints kNN figures and where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The set-up above runs in this process; Python reports it apart from its own start-up (ADADIM_EXEC_AT).
ADADIM_EXEC_AT="$(date +%s.%N)" exec .venv/bin/python -m adadim_dist.run --config configs/fmnist_demo.yaml "$@"
