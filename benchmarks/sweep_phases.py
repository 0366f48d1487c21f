"""A short sweep's fraction of wall time spent training, this checkout against an earlier commit.

    python benchmarks/sweep_phases.py --before REF [--trials 3] [--repeats 1]

The same small Ray Tune sweep (``python -m adadim_dist.tune``; a local Ray instance; one trial at a time, 2
DDP workers each; 15,000 Fashion-MNIST training images, one epoch of 58 steps, then one evaluation with a
10,000-image bank; trials differ in weight decay) runs with the code at ``REF`` (a temporary git worktree) and with this
checkout, taking turns. One short untimed job per checkout first fills numba's cache (kept per checkout).
Reports, per variant, ``sweep_overhead.measure``: the fraction of the sweep's wall time inside the epochs'
step loops, and the median start-up, evaluation and tail of its trials.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import checkout_at, demo_data_overrides, emit, run_service_job
    from sweep_overhead import measure
except ImportError:  # run as a module
    from benchmarks._common import checkout_at, demo_data_overrides, emit, run_service_job
    from benchmarks.sweep_overhead import measure

DATA = demo_data_overrides(REPO)


def sweep_file(checkout: Path, storage: Path, trials: int) -> dict:
    return {
        "name": "sweep-phases",
        "base_config": str(checkout / "configs" / "fmnist_smoke.yaml"),
        "overrides": [*DATA, f"run.storage_path={storage}", "data.subset=15000", "training.epochs=1",
                      "training.log_every=20", "eval.every_epochs=1", "eval.bank_size=10000", "eval.knn_k=[20]",
                      "eval.baselines=false", "tracking.experiment=sweep-phases", "run.checkpoints_to_keep=1"],
        "metric": "knn",
        "num_samples": 1,
        "scheduler": {"name": "fifo"},
        "trial": {"num_workers": 2, "cpus_per_worker": 0.9, "trial_cpus": 0.1},
        "max_concurrent_trials": 1,
        "search_space": {"optim.weight_decay": {"type": "grid",
                                                "values": [10.0 ** -(5 - i) for i in range(trials)]}},
    }


def run_sweep(checkout: Path, scratch: Path, name: str, trials: int) -> dict:
    from mlflow.tracking import MlflowClient

    storage = scratch / name
    storage.mkdir(parents=True)
    config = storage / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep_file(checkout, storage, trials)))
    out = subprocess.run([sys.executable, "-m", "adadim_dist.tune", "--config", str(config)], cwd=checkout,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    return measure(client, client.get_experiment_by_name("sweep-phases").experiment_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare against")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as scratch_dir, checkout_at(REPO, args.before, scratch_dir) as before:
        scratch = Path(scratch_dir)
        checkouts = {"before": before, "after": REPO}
        for label, checkout in checkouts.items():
            print(f"[bench] warm-up job ({label})", file=sys.stderr, flush=True)
            run_service_job(["--config", "configs/fmnist_smoke.yaml", "training.epochs=1",
                             "training.max_steps_per_epoch=5", "eval.baselines=false", *DATA,
                             f"run.storage_path={scratch / 'warm-up'}", f"run.name={label}"], label, checkout)
        for index in range(args.repeats):
            for label in (("before", "after") if index % 2 == 0 else ("after", "before")):
                print(f"[bench] sweep {label} #{index + 1}", file=sys.stderr, flush=True)
                results[label].append(run_sweep(checkouts[label], scratch, f"{label}-{index}", args.trials))
    emit({"benchmark": "sweep_phases", "before": args.before, "trials": args.trials, "repeats": args.repeats,
          "sweep": "15,000 images, 1 epoch of 58 steps, 2 DDP workers per trial, one trial at a time",
          **{label: runs if len(runs) > 1 else runs[0] for label, runs in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
