"""python -m adadim_dist.tune --config configs/tune/<name>.yaml [key=value ...]

A Ray Tune sweep over the AdaDim weighting (Train V2 pattern: each trial is a function that builds and fits
a ``TorchTrainer`` and reports back through ``TuneReportCallback``). MLflow: the sweep is a parent run, each
trial a nested child run. The best trial's full config is written as YAML that ``adadim_dist.run --config``
accepts as is. Running the same command again resumes an interrupted sweep.

A study (a sweep file with ``variants`` and ``seeds``, e.g. ``configs/study/``) runs the same way: every
variant × seed is one FIFO trial, and each trial's MLflow run carries the params and tags ``study.name``,
``study.variant`` and ``study.seed`` (= ``training.seed``), by which ``python -m adadim_dist.compare
--group-by variant`` pools the runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import yaml

from .config import Config, ConfigError, config_with_overrides
from .sweep import VARIANT_KEY, SweepConfig, concurrent_trials, load_sweep, to_tune_space, trial_overrides

PARENT_RUN_FILE = "mlflow_parent_run.json"


def trial_config(base: dict, params: dict[str, Any], run_name: str, sweep: SweepConfig) -> Config:
    """The base config with a trial's variant and sampled values, its resources and its own run name. The sweep's
    ``trial`` section lays out every trial (several may share a node), whatever the base's ``training.layout``."""
    overrides = trial_overrides(sweep, params) + [
        f"run.name={run_name}",
        "training.layout=as_given",
        f"training.num_workers={sweep.trial.num_workers}",
        f"training.cpus_per_worker={sweep.trial.cpus_per_worker}",
    ]
    return config_with_overrides(base, overrides)


def run_trial(params: dict[str, Any], base: dict, sweep_dict: dict, parent_run_id: str) -> None:
    """One Tune trial: a whole training job with its own nested MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .training.driver import build_trainer, open_tracking
    from .training.tracking import unsent_metrics_path

    sweep = SweepConfig.model_validate(sweep_dict)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, f"{sweep.name}-{trial_id}", sweep)
    labels = study_labels(sweep, params, cfg)
    sink = open_tracking(cfg, parent_run_id=parent_run_id,
                         extra_params={**{f"sweep.{k}": v for k, v in params.items() if k != VARIANT_KEY}, **labels})
    for key, value in labels.items():  # tags too: MLflow's UI filters and groups runs by tag
        sink.client.set_tag(sink.run_id, key, value)
    status = "FAILED"
    try:
        build_trainer(cfg, sink.run_id, callbacks=[TuneReportCallback()]).fit()
        status = "FINISHED"
    finally:
        if not sink.close(status):
            sink.spill(unsent_metrics_path(cfg))


def study_labels(sweep: SweepConfig, params: dict[str, Any], cfg: Config) -> dict[str, str]:
    """What a study's trial is called in MLflow (params and tags alike), so runs group by variant."""
    if not sweep.is_study:
        return {}
    return {"study.name": sweep.name, VARIANT_KEY: str(params.get(VARIANT_KEY, "base")),
            "study.seed": str(cfg.training.seed)}


def run_sweep(sweep: SweepConfig, base: Config) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from .data import prepare_datasets
    from .training.driver import (check_tracking_store, init_ray, read_run_file, resolve_paths, shutdown_ray,
                                  write_run_file)
    from .training.tracking import MLflowSink, resolve_tracking_uri

    base = resolve_paths(base)
    check_tracking_store(base)
    prepare_datasets(base.data, progress=True)
    storage = base.run.storage_path
    sweep_cfg = base.model_copy(update={"run": base.run.model_copy(update={"name": sweep.name})})
    sweep_dir = f"{storage.rstrip('/')}/{sweep.name}"

    uri = resolve_tracking_uri(base.tracking.uri, storage)
    recorded = read_run_file(sweep_cfg, PARENT_RUN_FILE)
    previous = json.loads(recorded)["run_id"] if recorded else None
    parent = MLflowSink(uri, base.tracking.experiment, sweep.name, storage, run_id=previous,
                        tags={"adadim.kind": "sweep"})
    if previous is None:
        parent.log_params({"sweep.metric": sweep.metric, "sweep.num_samples": sweep.num_samples,
                           "sweep.scheduler": sweep.scheduler.name,
                           **{f"space.{k}": v.model_dump() for k, v in sweep.search_space.items()},
                           **{f"variant.{k}": " ".join(v) for k, v in sweep.variants.items()},
                           **({"study.seeds": sweep.seeds} if sweep.seeds else {})})
        write_run_file(sweep_cfg, PARENT_RUN_FILE, json.dumps({"run_id": parent.run_id}))

    status = "FAILED"
    try:
        init_ray(base)
        resources = ray.cluster_resources()
        max_concurrent = concurrent_trials(sweep, resources.get("CPU", 1), resources.get("GPU", 0),
                                           base.training.use_gpu)
        trials = (f"{len(sweep.variants) or 1} variants × {len(sweep.seeds) or 1} seeds = "
                  f"{sweep.num_grid_trials} trials" if sweep.is_study else f"{sweep.num_samples} samples")
        print(f"[adadim] sweep {sweep.name}: {trials}, up to {max_concurrent} at once, "
              f"metric {sweep.metric_key}, scheduler {sweep.scheduler.name}", flush=True)
        from .training import driver

        if driver.worker_logs_dir:
            print(f"[adadim] the trials' own output: {driver.worker_logs_dir} (run.verbose=true shows it here)",
                  flush=True)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=base.model_dump(mode="json"),
                                 sweep_dict=sweep.model_dump(mode="json"), parent_run_id=parent.run_id),
            {"CPU": sweep.trial.trial_cpus},
        )
        if sweep.scheduler.name == "fifo":
            # FIFO compares no trial during training, and its trials may evaluate only after the last epoch
            # (studies, tuned comparisons); Tune would otherwise fail the first epoch's report for lacking the metric.
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        if tune.Tuner.can_restore(sweep_dir):
            print(f"[adadim] resuming sweep from {sweep_dir}", flush=True)
            tuner = tune.Tuner.restore(sweep_dir, trainable, resume_errored=True)
        else:
            scheduler = (
                ASHAScheduler(time_attr="epoch", grace_period=sweep.scheduler.grace_period,
                              reduction_factor=sweep.scheduler.reduction_factor, max_t=base.training.trained_epochs)
                if sweep.scheduler.name == "asha" else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space=to_tune_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric_key, mode="max", num_samples=sweep.num_samples, scheduler=scheduler,
                    max_concurrent_trials=max_concurrent,
                    search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=max_concurrent),
                    # Under FIFO every trial's function returns, so the next trial can run in its process, which
                    # has already imported torch, Ray Train and MLflow (seconds of CPU before a trial starts its
                    # workers). Not under ASHA: a trial it stops may still be inside fit() when Tune resets its
                    # process for the next trial, and Tune fails a trial whose reset times out.
                    reuse_actors=sweep.scheduler.name == "fifo",  # by name: ASHAScheduler subclasses FIFOScheduler
                ),
                run_config=tune.RunConfig(name=sweep.name, storage_path=storage),
            )
        results = tuner.fit()
        mark_stopped_trials(sweep, results, parent, base.training.trained_epochs)
        summary = summarise_sweep(sweep, base, results, parent, sweep_cfg)
        status = "FINISHED"
    finally:
        close_stopped_children(parent, status)
        parent.close(status)
        shutdown_ray()  # flushes the trials' forwarded output, so the summary is the last line printed
    return summary


def mark_stopped_trials(sweep: SweepConfig, results, parent, num_epochs: int) -> None:
    """Tune stops a trial's function once the scheduler has decided (early, or at max_t after its last epoch),
    so it records FAILED although nothing failed: a trial that reached the last epoch is FINISHED, one
    stopped early KILLED (MLflow's name for a stopped run)."""
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if result.error is not None or trial_id is None:
            continue
        status = "FINISHED" if result.metrics.get("epoch", 0) >= num_epochs else "KILLED"
        runs = parent.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}' and "
                          f"tags.mlflow.runName = '{sweep.name}-{trial_id}' and attributes.status != 'FINISHED'",
        )
        for run in runs:
            parent.client.set_terminated(run.info.run_id, status=status)


def summarise_sweep(sweep: SweepConfig, base: Config, results, parent, sweep_cfg: Config) -> dict[str, Any]:
    from .training.driver import write_run_file

    scores = []
    for result in results:
        if result.metrics and sweep.metric_key in result.metrics:
            scores.append((result.metrics[sweep.metric_key], result))
    if not scores:
        raise RuntimeError(f"sweep {sweep.name}: no trial reported {sweep.metric_key}; see the trial errors above")
    best_score, best = max(scores, key=lambda pair: pair[0])
    worst_score = min(score for score, _ in scores)
    best_params = {k: best.config[k] for k in sweep.param_keys}
    best_cfg = trial_config(base.model_dump(mode="json"), best_params, f"{sweep.name}-best", sweep)
    best_path = f"{sweep_cfg.run.storage_path.rstrip('/')}/{sweep.name}/best_config.yaml"
    best_yaml = (f"# Best trial of sweep {sweep.name} ({sweep.metric_key}={best_score:.4f}).\n"
                 f"# python -m adadim_dist.run --config {best_path}\n"
                 + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
    write_run_file(sweep_cfg, "best_config.yaml", best_yaml)
    parent.log_params({f"best.{k}": v for k, v in best_params.items()})
    parent.log({"best_score": best_score, "worst_score": worst_score, "num_trials": len(scores)}, step=0)
    parent.client.log_text(parent.run_id, best_yaml, "best_config.yaml")
    return {
        "sweep": sweep.name,
        "parent_run_id": parent.run_id,
        "metric": sweep.metric_key,
        "num_trials": len(scores),
        "best_score": best_score,
        "worst_score": worst_score,
        "best_params": best_params,
        "best_config": best_path,
    }


def close_stopped_children(parent, status: str) -> None:
    """Trials stopped early by ASHA (or killed with the sweep) cannot end their MLflow run themselves."""
    runs = parent.client.search_runs(
        [parent.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}' and attributes.status = 'RUNNING'"
    )
    for run in runs:
        parent.client.set_terminated(run.info.run_id, status="KILLED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adadim_dist.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep YAML (see configs/tune/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the sweep file, e.g. num_samples=8")
    args = parser.parse_intermixed_args(argv)  # options may follow the overrides
    logging.basicConfig(level=logging.INFO, format="[adadim] %(message)s")
    try:
        sweep, base = load_sweep(args.config, args.overrides)
        summary = run_sweep(sweep, base)
    except (ConfigError, FileNotFoundError) as err:
        print(f"adadim_dist: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
