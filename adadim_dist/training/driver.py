"""The driver: cheap checks first, then Ray, then a ``TorchTrainer`` fit; returns the run's summary.

Order matters: the config, the dataset files and the tracking store are checked before ``ray.init`` so a
user error costs seconds, not a cluster start-up. The MLflow run is created here (once per job, its id kept
next to the checkpoints) so a re-run with the same ``run.name`` resumes into the same run; rank 0 of the
workers writes the metrics; the driver ends the run FINISHED or FAILED.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, flatten
from .tracking import MLflowSink, resolve_tracking_uri

logger = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run.json"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached at start."""


def resolve_paths(cfg: Config) -> Config:
    """Absolute paths, so workers (whose working directory Ray chooses) see the same files."""
    data = cfg.data.model_copy(
        update={
            "train_path": cfg.data.train_path.resolve(),
            "test_path": cfg.data.test_path.resolve(),
            "cache_dir": cfg.data.cache_dir.resolve() if cfg.data.cache_dir else None,
        }
    )
    storage = str(cfg.run.storage_path)
    run = cfg.run if "://" in storage else cfg.run.model_copy(update={"storage_path": Path(storage).resolve()})
    return cfg.model_copy(update={"data": data, "run": run})


def run_directory(cfg: Config) -> Path:
    return Path(cfg.run.storage_path) / cfg.run.name


def start_fresh(cfg: Config) -> None:
    """--fresh: move the previous run's directory aside (never delete a user's checkpoints)."""
    directory = run_directory(cfg)
    if directory.exists():
        aside = directory.with_name(f"{directory.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        directory.rename(aside)
        print(f"[adadim] --fresh: previous run moved to {aside}", flush=True)


def open_tracking(cfg: Config) -> MLflowSink:
    """Create (first start) or reopen (resume) the job's MLflow run; fail fast when the store is down."""
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path)
    id_file = run_directory(cfg) / RUN_ID_FILE
    previous = json.loads(id_file.read_text())["run_id"] if id_file.is_file() else None
    try:
        sink = MLflowSink(uri, cfg.tracking.experiment, cfg.run.name, cfg.run.storage_path, run_id=previous)
    except Exception as err:
        raise TrackingUnavailableError(f"tracking.uri: cannot reach MLflow at {uri} ({type(err).__name__})") from err
    if previous is None:
        sink.log_params(flatten(cfg))
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(json.dumps({"run_id": sink.run_id, "tracking_uri": uri}))
    return sink


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(dashboard_host=cfg.run.dashboard_host, log_to_driver=True)


def fit(cfg: Config, fresh: bool = False) -> dict[str, Any]:
    from ..data import prepare_datasets

    cfg = resolve_paths(cfg)
    prepare_datasets(cfg.data, progress=True)
    if fresh:
        start_fresh(cfg)
    run_directory(cfg).mkdir(parents=True, exist_ok=True)
    (run_directory(cfg) / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    sink = open_tracking(cfg)

    status = "FAILED"
    try:
        init_ray(cfg)
        result = build_trainer(cfg, sink.run_id).fit()
        status = "FINISHED"
    finally:
        sink.close(status)
    return summarise(cfg, sink, result)


def build_trainer(cfg: Config, run_id: str | None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .worker import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "mlflow_run_id": run_id},
        scaling_config=ScalingConfig(
            num_workers=cfg.training.num_workers,
            use_gpu=cfg.training.use_gpu,
            resources_per_worker={"CPU": cfg.training.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=str(cfg.run.storage_path),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
        ),
    )


def summarise(cfg: Config, sink: MLflowSink, result) -> dict[str, Any]:
    """The final JSON line: read back from MLflow, so it shows what was recorded, not what was meant."""
    run = sink.client.get_run(sink.run_id)
    metrics = run.data.metrics
    first_k = cfg.eval.knn_k[0]
    summary = {
        "run_id": sink.run_id,
        "experiment": cfg.tracking.experiment,
        "run_name": cfg.run.name,
        "epochs": int(result.metrics.get("epoch", 0)) if result.metrics else 0,
        "knn_top1": metrics.get(f"knn/top1_k{first_k}"),
        "probe_top1": metrics.get("probe/top1"),
        "final_alpha": metrics.get("adadim/alpha"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "tracking_uri": resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path),
    }
    for name in ("random", "pixels"):
        key = f"baseline/knn_{name}_top1"
        if key in metrics:
            summary[f"knn_top1_{name}_encoder" if name == "random" else "knn_top1_raw_pixels"] = metrics[key]
    return summary
