"""MLflow tracking from rank 0 only, through an explicit client (no process-global fluent state).

One MLflow run per training job: created on the first start, reopened by id on every resume (the id is
stored in each checkpoint), ended FINISHED or FAILED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def default_tracking_uri(storage_path: Path) -> str:
    return f"sqlite:///{Path(storage_path).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None, storage_path: Path) -> str:
    return tracking_uri or default_tracking_uri(storage_path)


def get_or_create_experiment(client, name: str, storage_path: Path, local_store: bool) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store would otherwise put artifacts in ./mlruns of whatever directory the worker runs in.
    location = (Path(storage_path).resolve() / "mlartifacts").as_uri() if local_store else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between the lookup and the create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class MetricsSink:
    """log(metrics, step) / close(status). The null sink (other ranks) accepts and drops everything."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowSink(MetricsSink):
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, storage_path: Path,
                 run_id: str | None = None, tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        self.experiment_id = get_or_create_experiment(self.client, experiment, storage_path, local)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow's per-request limit
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
