#!/usr/bin/env bash
# Wheels that let the GPU core check (benchmarks/gpu_core.py) run DeepSpeed's ZeRO-2/3 steps on a bare CUDA
# machine with Python 3.12 and no network: DeepSpeed (built here as a pure-Python wheel, DS_BUILD_OPS=0) and
# what it imports, at the versions of constraints.txt, into .whl/ (about 6 MiB; keep .whl/ out of git).
# There: pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_core.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
OUT="${1:-.whl}"
mkdir -p "$OUT"
pin() { grep -iE "^$1==" constraints.txt; }
DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation "$(pin deepspeed)" -w "$OUT" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$OUT" \
    "$(pin hjson)" "$(pin ninja)" "$(pin py-cpuinfo)" "$(pin pydantic)" "$(pin pydantic_core)" \
    "$(pin annotated-types)" "$(pin typing-inspection)" "$(pin msgpack)" "$(pin einops)" "$(pin psutil)" \
    "$(pin tqdm)" "$(pin packaging)" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
du -sh "$OUT"
