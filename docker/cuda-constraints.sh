#!/usr/bin/env bash
# Print constraints.txt for the CUDA image: identical except that torch's CPU pin `torch==X.Y.Z+cpu` becomes
# `torch==X.Y.Z`, the same release in its default (CUDA) build. Every other pin passes through unchanged, so
# the image and the CPU environment cannot drift apart. Fails unless torch is pinned exactly once as +cpu.
set -euo pipefail
src="${1:?usage: cuda-constraints.sh path/to/constraints.txt}"
count="$(grep -cE '^torch==[0-9]+(\.[0-9]+)*\+cpu$' "$src" || true)"
if [ "$count" != "1" ]; then
    echo "cuda-constraints.sh: expected exactly one 'torch==X.Y.Z+cpu' line in $src, found ${count:-0}" >&2
    exit 1
fi
sed -E 's/^torch==([0-9]+(\.[0-9]+)*)\+cpu$/torch==\1/' "$src"
