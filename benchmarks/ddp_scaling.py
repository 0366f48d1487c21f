"""Steady-state images/s of the training service with 2 DDP workers against the same worker loop with 1 worker.

Both variants run the real entry point (``python -m adadim_dist.run``: Ray Train, FFCV, AdaDim, gloo DDP,
MLflow) on the smoke config with the same global batch (256), so they do the same optimisation work per
step, and use the whole machine: 2 workers × 1 CPU (1 torch thread, 1 loader thread each) against
1 worker × 2 CPUs (2 torch threads, 2 loader threads). Rate = the ``train/images_per_s`` windows the worker
logs every 10 steps, the first window (start-up, JIT) dropped for both; median over the windows. Runs
alternate between the variants (``--repeats``) so drift in machine load hits both.

    python benchmarks/ddp_scaling.py [--steps 100] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ddp_2_workers": ["training.num_workers=2", "training.cpus_per_worker=1", "data.num_loader_workers=1"],
    "single_worker": ["training.num_workers=1", "training.cpus_per_worker=2", "data.num_loader_workers=2"],
}


def run_once(variant: str, steps: int, storage: Path, index: int) -> list[float]:
    from mlflow.tracking import MlflowClient

    name = f"{variant}-{index}"
    args = [sys.executable, "-m", "adadim_dist.run", "--config", "configs/fmnist_smoke.yaml",
            *VARIANTS[variant], "training.global_batch_size=256", "training.epochs=1",
            f"training.max_steps_per_epoch={steps}", "training.log_every=10", "eval.baselines=false",
            "eval.bank_size=1000", "eval.knn_k=[20]", f"run.storage_path={storage}", f"run.name={name}",
            "tracking.experiment=ddp-scaling"]
    print(f"[bench] {name}: {steps} steps", file=sys.stderr, flush=True)
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("ddp-scaling").experiment_id],
                             filter_string=f"tags.mlflow.runName = '{name}'")[0]
    history = sorted(client.get_metric_history(run.info.run_id, "train/images_per_s"), key=lambda m: m.step)
    return [m.value for m in history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (windows of 10)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, alternating")
    args = parser.parse_args()

    windows: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as storage:
        for index in range(args.repeats):
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                windows[variant] += run_once(variant, args.steps, Path(storage), index)
    rates = {variant: statistics.median(values) for variant, values in windows.items()}
    emit({
        "benchmark": "ddp_scaling",
        "config": "configs/fmnist_smoke.yaml (small CNN width 16, AdaDim, LARS), global batch 256",
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "windows_per_variant": {variant: len(values) for variant, values in windows.items()},
        "ddp_2_workers_images_per_s": round(rates["ddp_2_workers"], 1),
        "single_worker_images_per_s": round(rates["single_worker"], 1),
        "ratio": round(rates["ddp_2_workers"] / rates["single_worker"], 3),
    })


if __name__ == "__main__":
    main()
