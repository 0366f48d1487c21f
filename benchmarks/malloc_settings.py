"""glibc's malloc settings under a training step: the plain loop of ``service_overhead.py`` in its process's main
thread with glibc's defaults (a plain PyTorch loop), in a thread of its own (as Ray Train runs a worker's training
function) with the defaults, and in a thread of its own with the settings the service's workers start with
(``WORKER_MALLOC_ENV`` of ``adadim_dist/training/driver.py``: one arena, blocks up to 32 MiB from the heap, its
top kept up to 1 GiB).

    python benchmarks/malloc_settings.py [--steps 160] [--repeats 2] [--config configs/fmnist_smoke.yaml]

Each variant runs in a fresh process; the variants take turns (the order reversed every other round). Rate =
images/s of each 20-step window, the first dropped, median over the rounds' windows; ``ratio`` against the main
thread with the defaults. ``minor_faults_per_step``: the process's minor page faults over the whole loop
(start-up included, alike for every variant) per step, median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import emit
    from service_overhead import DEFAULT_CONFIG, plain_loop
except ImportError:  # run as a module
    from benchmarks._common import emit
    from benchmarks.service_overhead import DEFAULT_CONFIG, plain_loop
from adadim_dist.training.driver import WORKER_MALLOC_ENV

VARIANTS = {"main_thread": {}, "own_thread": {}, "own_thread_service_settings": WORKER_MALLOC_ENV}


def child(variant: str, steps: int, config: str) -> None:
    """One variant's loop in this process; prints its windows and page faults as one JSON line."""
    result: dict = {}
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if variant == "main_thread":
        result.update(plain_loop(steps, config))
    else:
        thread = threading.Thread(target=lambda: result.update(plain_loop(steps, config)), name="TrainingThread")
        thread.start()
        thread.join()
    result["minor_faults_per_step"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="what every variant trains")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.config)
        return
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    faults: dict[str, list[float]] = {name: [] for name in VARIANTS}
    base_env = {key: value for key, value in os.environ.items() if key not in WORKER_MALLOC_ENV}
    for round_index in range(args.repeats):
        order = list(VARIANTS) if round_index % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            print(f"[bench] {name} #{round_index + 1}: {args.steps} steps", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                  "--config", args.config], env={**base_env, **VARIANTS[name]}, cwd=REPO,
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rates[name] += result["rates"][1:]
            faults[name].append(result["minor_faults_per_step"])
    medians = {name: statistics.median(values) for name, values in rates.items()}
    emit({
        "benchmark": "malloc_settings",
        "config": args.config,
        "steps": args.steps,
        "repeats": args.repeats,
        "images_per_s": {name: round(value, 1) for name, value in medians.items()},
        "ratio": {name: round(value / medians["main_thread"], 3) for name, value in medians.items()},
        "minor_faults_per_step": {name: round(statistics.median(values), 1) for name, values in faults.items()},
    })


if __name__ == "__main__":
    main()
