"""How long a study takes here: one short real training job per encoder width, extrapolated to the study.

Each job is the study's own base config (its ``overrides`` applied, the full training set) for one epoch of
``--steps`` steps, evaluated once as the study's trials are, run through ``python -m adadim_dist.run`` on the
local Ray instance, one job at a time. From MLflow it reads the training rate (median of the
``train/images_per_s`` windows, the first, with the loaders' JIT compilation, dropped) and takes everything
else of the job's wall time as the per-trial overhead (worker start-up, FFCV compilation, evaluation,
checkpoint). Then: trial = overhead + epochs × steps per epoch × global batch / rate, and study = trials ×
trial / concurrent trials.

    python benchmarks/study_sizing.py [--study configs/study/adadim_fmnist.yaml] [--widths 16 8] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

try:
    from _common import emit, images_per_s_windows, run_service_job
except ImportError:  # run as a module
    from benchmarks._common import emit, images_per_s_windows, run_service_job

REPO = Path(__file__).resolve().parents[1]


def measure(study: Path, width: int, steps: int, storage: Path) -> dict:
    from adadim_dist.sweep import load_sweep

    sweep, base = load_sweep(study)
    name = f"sizing-w{width}"
    overrides = [*sweep.overrides, f"model.small_cnn_width={width}", "training.epochs=1",
                 f"training.max_steps_per_epoch={steps}", "training.log_every=10", "eval.every_epochs=1",
                 "training.layout=as_given", f"training.num_workers={sweep.trial.num_workers}",
                 f"training.cpus_per_worker={sweep.trial.cpus_per_worker}",
                 f"run.storage_path={storage}", "tracking.experiment=study-sizing", f"run.name={name}"]
    config = REPO / "configs" / "fmnist_smoke.yaml" if sweep.base_config is None else study.parent / sweep.base_config
    summary, client, wall = run_service_job(["--config", str(config), "--fresh", *overrides],
                                            f"study_sizing: width {width}", REPO, {"PYTHONUNBUFFERED": "1"})
    run = client.get_run(summary["run_id"])
    windows = images_per_s_windows(client, summary["run_id"])
    rate = statistics.median(windows)
    train_seconds = steps * base.training.global_batch_size / rate
    return {"width": width, "images_per_s": round(rate, 1), "windows": len(windows), "job_wall_s": round(wall, 1),
            "overhead_s": round(wall - train_seconds, 1), "knn_top1_after_steps": run.data.metrics.get("knn/top1_k20")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "configs/study/adadim_fmnist.yaml")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--storage", type=Path, default=Path("/tmp/study-sizing"))
    args = parser.parse_args()
    args.study = args.study.resolve()
    os.chdir(REPO)  # the configs' data paths are relative to the repository

    from adadim_dist.sweep import load_sweep

    sweep, base = load_sweep(args.study)
    images = min(60000, base.data.subset or 60000)  # Fashion-MNIST's training split
    steps_per_epoch = images // base.training.global_batch_size
    trials = sweep.num_grid_trials
    concurrent = sweep.max_concurrent_trials or 1
    from adadim_dist.data import prepare_datasets
    from adadim_dist.training.driver import resolve_paths

    prepare_datasets(resolve_paths(base).data, progress=False)  # writing the .beton files is not a trial's cost
    results = []
    for width in args.widths:
        measured = measure(args.study, width, args.steps, args.storage.resolve())
        trial_s = measured["overhead_s"] + base.training.epochs * steps_per_epoch * base.training.global_batch_size \
            / measured["images_per_s"]
        measured.update({"trial_s": round(trial_s), "study_hours": round(trials * trial_s / concurrent / 3600, 2)})
        results.append(measured)
        print(f"[sizing] width {width}: {measured}", flush=True)
    study_name = args.study.relative_to(REPO) if args.study.is_relative_to(REPO) else args.study
    emit({"benchmark": "study_sizing", "study": str(study_name),
          "trials": trials, "concurrent": concurrent, "epochs": base.training.epochs,
          "steps_per_epoch": steps_per_epoch, "global_batch": base.training.global_batch_size,
          "measured_steps": args.steps, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
