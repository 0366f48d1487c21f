"""MLflow tracking from rank 0 only, through an explicit client (no process-global fluent state).

One MLflow run per training job: created on the first start, reopened by id on every resume (the id is
stored in each checkpoint), ended FINISHED or FAILED.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..config import is_uri, mask_credentials

logger = logging.getLogger(__name__)

def default_tracking_uri(storage_path: Path) -> str:
    return f"sqlite:///{Path(storage_path).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None, storage_path: Path) -> str:
    """``tracking.uri``, else the ``MLFLOW_TRACKING_URI`` environment variable (what docker/compose.yaml and
    the KubeRay manifests set), else a SQLite file under ``run.storage_path``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage_path)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "glusterfs", "ceph", "9p",
                       "fuse.s3fs", "fuse.gcsfuse", "fuse.sshfs", "fuse.juicefs", "fuse.mountpoint-s3", "efs")


def filesystem_of(path: Path, mounts_text: str | None = None) -> tuple[str, str]:
    """(mount point, file-system type) of the mount holding ``path``: the longest matching mount point in
    ``/proc/mounts`` (or ``mounts_text``, for tests). ("", "") where that table is not available."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return "", ""
    path = str(Path(path).resolve())
    best = ("", "")
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best[0]):
            best = (mount_point, fields[2])
    return best


def network_sqlite_store(tracking_uri: str, mounts_text: str | None = None) -> str | None:
    """Why a SQLite tracking store is unsafe here, or None: SQLite's file locking is unreliable over network
    file systems, where the driver and rank 0 (on different nodes) would both write the file."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    mount_point, fs_type = filesystem_of(db.parent if not db.exists() else db, mounts_text)
    if fs_type in NETWORK_FILESYSTEMS:
        return f"the SQLite file {db} is on a network file system ({fs_type} mounted at {mount_point})"
    return None


# What these experiments are (training runs, not GenAI traces). MLflow 3.17's UI no longer reads this tag to pick
# its view (scripts/mlflow_ui_check.py): the run page's URL carries the view instead (``run_page``).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client, name: str, storage_path: Path, local_store: bool,
                             tracking_uri: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if not set(EXPERIMENT_KIND.items()) <= set((experiment.tags or {}).items()):
            for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    # A local store would otherwise put artifacts in ./mlruns of whatever directory the worker runs in: they go
    # under run.storage_path, or beside the SQLite file when the storage is an object store (s3://...).
    location = None
    if local_store and "://" not in str(storage_path):
        location = (Path(storage_path).resolve() / "mlartifacts").as_uri()
    elif local_store and tracking_uri and sqlite_path(tracking_uri) is not None:
        location = (sqlite_path(tracking_uri).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # another process created it between the lookup and the create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run's own page is: on the tracking server, or on ``mlflow ui`` (default port) for a local store. In
    the UI's "Model training" view: a new user's browser otherwise opens it in the GenAI view (MLflow 3.17
    picks the view from the URL or the browser's storage, default GenAI; scripts/mlflow_ui_check.py)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return mask_credentials(f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")


def refused_status(err: Exception) -> int | None:
    """401 or 403 when MLflow refused the credentials (not an outage: retrying will not help), else None."""
    status = getattr(err, "get_http_status_code", lambda: None)()
    if status in (401, 403):
        return status
    return {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(getattr(err, "error_code", ""))


def describe_layout(world_size: int, training) -> str:
    """What the ``machine.layout`` tag says: "2 workers × 1 CPU", "1 worker × 2 CPUs", "8 workers × 1 GPU"."""
    workers = f"{world_size} worker{'s' if world_size > 1 else ''}"
    if training.use_gpu:
        return f"{workers} × 1 GPU"
    cpus = training.cpus_per_worker
    return f"{workers} × {cpus:g} CPU{'s' if cpus != 1 else ''}"


def cpu_model() -> str:
    """The CPU's model name and core count (``/proc/cpuinfo``; the platform's processor elsewhere)."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


class MetricsSink:
    """log(metrics, step) / close(status). The null sink (other ranks) accepts and drops everything."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        pass

    def record_machine(self, start_epoch: int, layout: str = "") -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowSink(MetricsSink):
    MAX_PENDING = 200_000  # metric values queued while the server is unreachable (~1,000 steps of every metric)

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, storage_path: Path,
                 run_id: str | None = None, tags: dict[str, str] | None = None,
                 parent_run_id: str | None = None, overflow_path: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._pending: list = []  # queued metric values, oldest first (the sender removes them once sent)
        self._pending_status: str | None = None
        self._outage_reported = False
        self.overflow_path = overflow_path
        self._lock = threading.Lock()  # guards _pending
        self._send_lock = threading.Lock()  # held while a chunk is on its way
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        self._stopping = False
        self._failing = False
        self._attempts = 0
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        self.experiment_id: str | None = None
        self.created = run_id is None  # this start created the run (``abandon`` deletes it)
        self.previous_status: str | None = None  # a reopened run's status before this start (``abandon``)
        if run_id is not None:
            self.run_id = run_id
            try:
                self.experiment_id = get_or_create_experiment(self.client, experiment, storage_path, local, tracking_uri)
                self.previous_status = self.client.get_run(run_id).info.status
                self.client.update_run(run_id, status="RUNNING")
            except Exception as err:  # noqa: BLE001 - a worker restarted during an outage keeps training
                logger.warning("MLflow unreachable (%s): run %s stays as it was, metrics are buffered",
                               type(err).__name__, run_id)
                self._outage_reported = True
        else:
            self.experiment_id = get_or_create_experiment(self.client, experiment, storage_path, local, tracking_uri)
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics and return at once: a background thread sends them in order, retrying with back-off
        while the server is unreachable, so training never waits on tracking (MLflow's own retries take ~2 s,
        and ~22 s when requests time out). At most ``MAX_PENDING`` values are kept; beyond that the oldest go
        to ``overflow_path`` (replayable), or are dropped with a warning when the sink has none."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
            overflow = len(self._pending) - self.MAX_PENDING
        if overflow > 0:
            self._shed(overflow)
        self._start_sender()
        self._wake.set()

    def flush(self, timeout_s: float = 10.0, attempts: int = 1) -> bool:
        """Wait until everything queued is sent; False once ``attempts`` more sends have failed (a second
        apart), or after ``timeout_s``: during an outage it waits for a few attempts, not for the outage to end."""
        self._start_sender()
        seen, failures = self._attempts, 0
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            if self._attempts > seen:
                seen = self._attempts
                if self._failing:
                    failures += 1
                    if failures >= attempts:
                        return False
                    time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
                    self._wake.set()  # retry now, not after the sender's back-off
            time.sleep(0.02)
        return False

    def _start_sender(self) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, name="mlflow-sink", daemon=True)
            self._sender.start()

    def _send_loop(self) -> None:
        delay = 0.0
        while not self._stopping:
            self._wake.wait(timeout=delay or None)
            self._wake.clear()
            while not self._stopping and self._send_chunk():
                pass
            # Back off while failing: 1 s, doubling to 30 s; a flush or a new value wakes it at once.
            delay = min(max(2 * delay, 1.0), 30.0) if self._failing else 0.0

    def _send_chunk(self) -> bool:
        """Send the oldest values (MLflow's per-request limit); True when more can be sent at once."""
        with self._send_lock:
            with self._lock:
                chunk = self._pending[:1000]
            if not chunk:
                return False
            try:
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            except Exception as err:  # noqa: BLE001 - any transport error means "try again later"
                self._note_failure(err)
                self._attempts += 1
                return False
            with self._lock:
                del self._pending[: len(chunk)]
                left = len(self._pending)
            self._failing = False
            self._attempts += 1
            if self._outage_reported and not left:
                logger.warning("MLflow reachable again: buffered metrics sent")
                self._outage_reported = False
            return True

    def _note_failure(self, err: Exception) -> None:
        self._failing = True
        if self._outage_reported:
            return
        self._outage_reported = True
        status = refused_status(err)
        if status is not None:
            # Not an outage: waiting will not help. Said once, loudly; the values stay queued and go to the
            # unsent-metrics file at the epoch's end, to replay once the credentials are fixed.
            logger.error("MLflow refused this job's credentials mid-run (HTTP %d): metrics are kept and written to "
                         "the unsent-metrics file; check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and "
                         "replay it", status)
        else:
            with self._lock:
                queued = len(self._pending)
            logger.warning("MLflow unreachable (%s): %d metric values queued, training continues",
                           type(err).__name__, queued)

    def _shed(self, count: int) -> None:
        """The oldest ``count`` queued values go to ``overflow_path`` (or are dropped): the queue is bounded."""
        with self._send_lock, self._lock:
            oldest, self._pending[:count] = self._pending[:count], []
        if self.overflow_path is not None:
            self._write_rows(self.overflow_path, oldest)
        else:
            logger.warning("MLflow sink: %d queued metric values dropped (queue full, no overflow file)", count)

    def _write_rows(self, path: Path, metrics: list) -> None:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            for m in metrics:
                handle.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                         "timestamp": m.timestamp, "step": m.step}) + "\n")

    def spill(self, path: Path) -> int:
        """Write still-unsent metrics as JSON lines (key, value, timestamp, step), and the run's final status
        if ``close`` could not set it; returns how many metric values. Waits for a send in flight, so no value
        is both sent and written."""
        with self._send_lock, self._lock:
            unsent, self._pending = self._pending, []
        if not unsent and self._pending_status is None:
            return 0
        import json

        self._write_rows(Path(path), unsent)
        if self._pending_status is not None:
            with Path(path).open("a") as handle:
                handle.write(json.dumps({"run_id": self.run_id, "status": self._pending_status,
                                         "end_time": int(time.time() * 1000)}) + "\n")
        logger.warning("MLflow still unreachable: %d metric values%s written to %s (replay with "
                       "python -m adadim_dist.training.tracking replay %s)", len(unsent),
                       f" and the run's status {self._pending_status}" if self._pending_status else "", path, path)
        self._pending_status = None
        return len(unsent)

    def record_machine(self, start_epoch: int, layout: str = "") -> None:
        """Tag the CPU model this start trains on (``machine.cpu``), and every start's model in
        ``machine.cpu_history`` ("from epoch E: model; ..."): the CPU's arithmetic moves results by more than
        the seed does, so runs are compared within one model, and a resume on another one shows. ``layout``
        (``machine.layout``, e.g. "2 workers × 1 CPU"): how this start's workers were laid out."""
        try:
            tags = self.client.get_run(self.run_id).data.tags
            entry = f"from epoch {start_epoch}: {cpu_model()}"
            history = [h for h in tags.get("machine.cpu_history", "").split("; ") if h]
            if not history or history[-1].split(": ", 1)[-1] != cpu_model():
                history.append(entry)
            self.client.set_tag(self.run_id, "machine.cpu_history", "; ".join(history)[:5000])
            self.client.set_tag(self.run_id, "machine.cpu", cpu_model())
            if layout:
                self.client.set_tag(self.run_id, "machine.layout", layout)
        except Exception as err:  # noqa: BLE001 - the record is worth a warning, not a lost job
            logger.warning("tracking: could not record the machine (%s)", type(err).__name__)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100], synchronous=True)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def abandon(self) -> None:
        """Undo this start's mark on the store, for a start refused before any training: a run it created is
        deleted, a run it reopened gets back the status it had."""
        self._stopping = True
        self._wake.set()
        try:
            if self.created:
                self.client.delete_run(self.run_id)
            elif self.previous_status is not None:
                self.client.update_run(self.run_id, status=self.previous_status)
        except Exception as err:  # noqa: BLE001 - the refusal the caller raises is what the user must see
            logger.warning("tracking: could not undo run %s (%s)", self.run_id, type(err).__name__)

    def close(self, status: str = "FINISHED") -> bool:
        """End the run with ``status``; False (status kept for ``spill``) while MLflow is unreachable."""
        sent = self.flush(timeout_s=30.0, attempts=3)  # the end of a job: worth a few retries
        self._stopping = True
        self._wake.set()
        if sent:
            try:
                self.client.set_terminated(self.run_id, status=status)
                return True
            except Exception as err:  # noqa: BLE001 - the job's outcome must not depend on the tracking server
                logger.warning("MLflow unreachable (%s): cannot mark run %s %s", type(err).__name__, self.run_id,
                               status)
        self._pending_status = status
        return False


def unsent_metrics_path(cfg) -> Path:
    """Where metric values and a final status that MLflow could not take wait for ``replay``."""
    root = Path.home() / ".adadim" if is_uri(cfg.run.storage_path) else Path(cfg.run.storage_path)
    return root / cfg.run.name / "unsent_metrics.jsonl"


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
    """Send what ``MLflowSink.spill`` wrote to its runs: the metrics in order, then each run's final status;
    returns how many metric values were sent."""
    import json

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    metrics = [row for row in rows if "key" in row]
    for row in metrics:
        client.log_batch(row["run_id"], metrics=[Metric(row["key"], row["value"], row["timestamp"], row["step"])])
    for row in rows:
        if "status" in row:
            client.set_terminated(row["run_id"], status=row["status"], end_time=row["end_time"])
    return len(metrics)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "replay":
        print("usage: python -m adadim_dist.training.tracking replay FILE [TRACKING_URI]", file=sys.stderr)
        sys.exit(2)
    print(f"sent {replay(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)} metric values")
