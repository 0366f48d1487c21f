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
        self._pending: list = []
        self._outage_reported = False
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
        """Send metrics; while the tracking server is unreachable they are buffered (training goes on) and
        sent, in order, by the first call that succeeds again."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        self.flush()

    def flush(self) -> bool:
        """Send what is buffered; False while the server is still unreachable."""
        while self._pending:
            chunk = self._pending[:1000]  # MLflow's per-request limit
            try:
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            except Exception as err:  # noqa: BLE001 - any transport error means "try again later"
                if not self._outage_reported:
                    logger.warning("MLflow unreachable (%s): buffering %d metric values, training continues",
                                   type(err).__name__, len(self._pending))
                    self._outage_reported = True
                return False
            del self._pending[: len(chunk)]
            if self._outage_reported and not self._pending:
                logger.warning("MLflow reachable again: buffered metrics sent")
                self._outage_reported = False
        return True

    def spill(self, path: Path) -> int:
        """Write still-unsent metrics as JSON lines (key, value, timestamp, step); returns how many."""
        if not self._pending:
            return 0
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            for m in self._pending:
                handle.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                         "timestamp": m.timestamp, "step": m.step}) + "\n")
        count = len(self._pending)
        logger.warning("MLflow still unreachable: %d metric values written to %s (replay with "
                       "python -m adadim_dist.training.tracking replay %s)", count, path, path)
        self._pending.clear()
        return count

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when an HTTP tracking server is down."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except OSError as err:
        raise ConnectionError(f"cannot reach MLflow at {tracking_uri}: {getattr(err, 'reason', err)}") from None


def replay(path: Path, tracking_uri: str | None = None) -> int:
    """Send metrics spilled by ``MLflowSink.spill`` to their runs; returns how many were sent."""
    import json

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for row in rows:
        client.log_batch(row["run_id"], metrics=[Metric(row["key"], row["value"], row["timestamp"], row["step"])])
    return len(rows)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "replay":
        print("usage: python -m adadim_dist.training.tracking replay FILE [TRACKING_URI]", file=sys.stderr)
        sys.exit(2)
    print(f"sent {replay(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)} metric values")
