"""How much of a finished sweep's (or study's) wall time its trials spent training.

    python benchmarks/sweep_overhead.py --experiment collapse-study [--tracking-uri URI] [--storage-path runs]

Per finished trial run: its wall time in MLflow (end − start: the trial's start-up, training, evaluation,
checkpoints and export) and its training time (the sum of ``train/epoch_seconds``, the time inside the epochs'
step loops, which includes the first step's FFCV pipeline compilation). The sweep's wall time runs from its
first trial's start to its last trial's end, so the gaps between trials (Tune starting the next one) count as
overhead too. Trials that logged their start-up phases and evaluations (``time/*``, since 2026-12-03) also give
the median of each. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit


def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import resolve_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--storage-path", default="runs")
    args = parser.parse_args(argv)
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri, Path(args.storage_path)))
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"sweep_overhead: error: no MLflow experiment named {args.experiment!r}", file=sys.stderr)
        return 2
    measured = measure(client, experiment.experiment_id)
    if measured is None:
        print(f"sweep_overhead: error: {args.experiment!r} has no finished training runs", file=sys.stderr)
        return 2
    emit({"benchmark": "sweep_overhead", "experiment": args.experiment, **measured})
    return 0


def measure(client, experiment_id: str) -> dict | None:
    """The figures above for one MLflow experiment's finished trial runs (None without any)."""
    runs = [r for r in client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
            if "train/epoch_seconds" in r.data.metrics and r.info.end_time]
    if not runs:
        return None
    trial_wall = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    training = [sum(m.value for m in client.get_metric_history(r.info.run_id, "train/epoch_seconds")) for r in runs]
    sweep_wall = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    timed = {key: [r.data.metrics[key] for r in runs if key in r.data.metrics]
             for key in ("time/to_first_step_s", "time/first_step_s", "time/eval_s", "time/tail_s")}
    return {
        "trials": len(runs),
        "sweep_wall_s": round(sweep_wall),
        "training_s": round(sum(training)),
        "training_fraction_of_sweep": round(sum(training) / sweep_wall, 3),
        "training_fraction_of_trials": round(sum(training) / sum(trial_wall), 3),
        "median_trial_wall_s": round(statistics.median(trial_wall), 1),
        "median_trial_training_s": round(statistics.median(training), 1),
        **{f"median_{key.split('/')[1]}": round(statistics.median(values), 1)
           for key, values in timed.items() if values},
        **{f"trials_with_{key.split('/')[1]}": len(values) for key, values in timed.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
