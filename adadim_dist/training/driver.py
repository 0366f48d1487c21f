"""The driver: cheap checks first, then Ray, then a ``TorchTrainer`` fit; returns the run's summary.

Order matters: the config, the dataset files and the tracking server are checked before ``ray.init`` so a
user error costs seconds, not a cluster start-up. The MLflow run is created here, while Ray starts (once per
job, its id kept next to the checkpoints) so a re-run with the same ``run.name`` resumes into the same run;
rank 0 of the workers writes the metrics; the driver ends the run FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, config_with_overrides, flatten, is_uri, storable, with_defaults
from .checkpoint import check_compatible, latest_complete_checkpoint, load_state
from .storage import Location
from .progress import ProgressBoard, ProgressPrinter
from .timing import describe_startup, process_started_at, time_before_python
from .tracking import (MLflowSink, check_reachable, mask_credentials, network_sqlite_store, refused_status,
                       resolve_tracking_uri, run_page, unsent_metrics_path)

logger = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run.json"
# One quick retry and a 10 s timeout per MLflow request: while the server is down, logging buffers instead of
# stalling the job in MLflow's default retry loop (minutes per call).
WORKER_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# glibc's malloc as a training step needs it (benchmarks/malloc_settings.py): by default glibc hands the freed top
# of its heap back to the kernel after each step's backward pass and faults it in again in the next forward pass,
# and serves blocks above an adaptive threshold from mmap (~6,000 page faults a step on the smoke config). Blocks up
# to 32 MiB (glibc's largest threshold) come from the heap, whose top is kept up to 1 GiB; one arena, because Ray
# Train runs the training function in a thread of its own, which would get an arena of its own (64 MiB heaps).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                     "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
CONTROLLER_POLL_ENV, CONTROLLER_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# How often the dashboard agent of a local instance gathers the node's statistics for the dashboard (a psutil
# pass over every process; Ray's default is every 5 s). Without a dashboard, once a minute.
NODE_STATS_INTERVAL_ENV, NODE_STATS_INTERVAL_MS = "REPORTER_UPDATE_INTERVAL_MS", "60000"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached at start."""


def failure_reason(err: BaseException) -> str:
    """The root cause of a failed fit, in one line (Ray wraps worker exceptions in its own)."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        rank, cause = min(failures.items())
        cause = getattr(cause, "cause", None) or cause
        text = str(cause).strip().splitlines()
        return f"worker {rank}: {type(cause).__name__}: {text[-1] if text else ''}"
    controller = getattr(err, "controller_failure", None)
    if controller is not None:
        return f"controller: {type(controller).__name__}: {controller}"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def resolve_paths(cfg: Config) -> Config:
    """Absolute paths, so workers (whose working directory Ray chooses) see the same files."""
    data = cfg.data.model_copy(
        update={
            "train_path": cfg.data.train_path.resolve(),
            "test_path": cfg.data.test_path.resolve() if cfg.data.test_path else None,
            "cache_dir": cfg.data.cache_dir.resolve() if cfg.data.cache_dir else None,
        }
    )
    evaluation = cfg.eval.model_copy(update={"bank_path": cfg.eval.bank_path.resolve() if cfg.eval.bank_path
                                             else None})
    storage = cfg.run.storage_path
    run = cfg.run if is_uri(storage) else cfg.run.model_copy(update={"storage_path": str(Path(storage).resolve())})
    return cfg.model_copy(update={"data": data, "eval": evaluation, "run": run})


def run_location(cfg: Config) -> Location:
    """The run directory, ``<run.storage_path>/<run.name>``: local, NFS and object stores alike (the place Ray
    Train writes the run's checkpoints to)."""
    return Location.of(cfg.run.storage_path) / cfg.run.name


def read_run_file(cfg: Config, name: str) -> str | None:
    file = run_location(cfg) / name
    return file.read_text() if file.is_file() else None


def write_run_file(cfg: Config, name: str, text: str) -> None:
    (run_location(cfg) / name).write_text(text)


def start_fresh(cfg: Config) -> None:
    """--fresh: move the previous run's directory aside (never delete a user's checkpoints)."""
    directory = run_location(cfg)
    if directory.exists():
        aside = directory.parent / f"{directory.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        directory.move_to(aside)
        print(f"[adadim] --fresh: previous run moved to {aside}", flush=True)


def open_tracking(cfg: Config, parent_run_id: str | None = None, extra_params: dict | None = None) -> MLflowSink:
    """Create (first start) or reopen (resume) the job's MLflow run; fail fast when the store is down.

    The run id is kept in the run directory, so a re-run (or a restored sweep trial) finds it again.
    """
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path)
    recorded = read_run_file(cfg, RUN_ID_FILE)
    previous = json.loads(recorded)["run_id"] if recorded else None
    try:
        check_reachable(uri)
        sink = MLflowSink(uri, cfg.tracking.experiment, cfg.run.name, cfg.run.storage_path, run_id=previous,
                          parent_run_id=parent_run_id)
    except ConnectionError as err:
        raise TrackingUnavailableError(mask_credentials(f"tracking.uri: {err}")) from None
    except Exception as err:
        refused = refused_status(err)
        if refused is not None:  # not an outage: one line that says what to fix
            raise TrackingUnavailableError(mask_credentials(
                f"tracking.uri: MLflow at {uri} refused the credentials (HTTP {refused}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server")) from None
        raise TrackingUnavailableError(
            mask_credentials(f"tracking.uri: cannot use MLflow at {uri} ({type(err).__name__}: {err})")) from None
    if previous is None:
        params = {**flatten(cfg), **(extra_params or {})}
        sink.log_params({key: mask_credentials(value) if isinstance(value, str) else value
                         for key, value in params.items()})
        write_run_file(cfg, RUN_ID_FILE, json.dumps({"run_id": sink.run_id, "tracking_uri": mask_credentials(uri)}))
    return sink


#: Where the workers' output goes while the console hides it (run.verbose=false): the Ray session's logs.
worker_logs_dir: str | None = None


def init_ray(cfg: Config) -> None:
    """Connect to ``run.ray_address`` (or RAY_ADDRESS), or start a local instance. The workers' own output
    (Ray Train's reports, controller chatter, rank 0's step lines) reaches the console only with
    ``run.verbose``; otherwise rank 0's story arrives through the progress board and the rest stays in the
    session's log files, which the summary names."""
    global worker_logs_dir
    import ray

    if ray.is_initialized():
        return
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": cfg.run.verbose, "logging_level": logging.INFO if cfg.run.verbose else logging.WARNING}
    if address:
        context = ray.init(address=address, **quiet)
    else:
        if not cfg.run.dashboard:
            os.environ.setdefault(NODE_STATS_INTERVAL_ENV, NODE_STATS_INTERVAL_MS)  # read by the agent at start
        context = ray.init(include_dashboard=cfg.run.dashboard, dashboard_host=cfg.run.dashboard_host, **quiet)
        if not cfg.run.verbose:
            stop_log_monitor()
    session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    worker_logs_dir = None if cfg.run.verbose or not session_dir else str(Path(session_dir) / "logs")
    start_autoscaling_coordinator()


def stop_log_monitor() -> None:
    """Stop the log monitor of the local instance this process started. It reads every worker's log files ten
    times a second to send new lines to a driver that shows them; with ``run.verbose`` off nothing asks for
    them (the files stay, and the summary names them), and on a machine whose cores all train its wake-ups cost
    training time (BENCHMARKS.md, "Service against a plain loop")."""
    from ray._private import worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    if node is None:
        return
    try:
        node.kill_log_monitor(check_alive=False)
    except Exception as err:  # noqa: BLE001 - a Ray without this private method: the monitor stays, no harm
        logger.debug("log monitor left running: %s", err)


def check_dataset_fits(cfg: Config, train_info) -> None:
    """Every worker must get at least one full batch (the training loader drops the last partial one)."""
    count = min(train_info.num_samples, cfg.data.subset or train_info.num_samples)
    if count == 0:
        raise ConfigError(f"data.train_path: {cfg.data.train_path} holds no images")
    per_worker = count // cfg.training.num_workers
    if per_worker < cfg.training.batch_size_per_worker:
        raise ConfigError(
            f"training.global_batch_size: {cfg.training.global_batch_size} needs {cfg.training.batch_size_per_worker} "
            f"images per worker, but {count} training images give each of {cfg.training.num_workers} workers {per_worker}"
        )


def check_knn_bank(cfg: Config, train_info) -> None:
    if cfg.data.test_path is None:
        return  # label-free evaluation: no kNN
    if cfg.eval.bank_path is not None:
        from ..data import check_beton

        try:
            images = check_beton(cfg.eval.bank_path).num_samples
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"eval.bank_path: {err}") from None
        where = f"images of {cfg.eval.bank_path.name}"
    else:
        images, where = min(train_info.num_samples, cfg.data.subset or train_info.num_samples), "training images"
    bank = min(images, cfg.eval.bank_size or 10**12)
    if max(cfg.eval.knn_k) > bank:
        raise ConfigError(f"eval.knn_k: k={max(cfg.eval.knn_k)} is larger than the kNN bank ({bank} {where})")


def check_resumable(cfg: Config) -> None:
    """Refuse, before any work, to resume a run whose checkpoints were written by an incompatible config."""
    previous = read_run_file(cfg, "config.yaml")
    if previous:
        check_compatible(yaml.safe_load(previous), cfg)


def fit(cfg: Config, fresh: bool = False) -> dict[str, Any]:
    from ..data import prepare_datasets

    stamps = {"command_started_at": process_started_at(), "before_python_s": time_before_python()}
    cfg = resolve_paths(cfg)
    check_tracking_store(cfg)
    train_info, _ = prepare_datasets(cfg.data, progress=True)
    check_dataset_fits(cfg, train_info)
    check_knn_bank(cfg, train_info)
    if fresh:
        start_fresh(cfg)
    check_resumable(cfg)
    changes = resume_changes(cfg)
    fail_fast_http()
    try:
        check_reachable(resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path))  # a down server: seconds
    except ConnectionError as err:
        raise TrackingUnavailableError(mask_credentials(f"tracking.uri: {err}")) from None
    sink, trained = start_ray_and_tracking(cfg)
    stamps["ray_ready_at"] = time.time()
    status, result, board = "FAILED", None, ProgressBoard()
    try:
        if changes is not None:
            record_resume(sink, cfg, changes)
        write_run_file(cfg, "config.yaml", yaml.safe_dump(storable(cfg), sort_keys=False))  # as the user gave it
        warn_if_sqlite_across_nodes(cfg)
        with ProgressPrinter(board, show_lines=not cfg.run.verbose):
            result = build_trainer(trained, sink.run_id, resume_from=local_resume_checkpoint(cfg),
                                   progress=board, stamps=stamps, standalone=True).fit()
        status = "FINISHED"
        log_tail(sink, board, cfg.training.trained_epochs)
    finally:
        if not sink.close(status):  # MLflow down at the end: the status waits in the file with the metrics
            sink.spill(unsent_metrics_path(cfg))
        with contextlib.suppress(Exception):  # a cluster that outlives the job keeps no stale keys
            board.clear()
        shutdown_ray()  # flushes the workers' forwarded output, so the summary is the last thing printed
    return summarise(cfg, sink, result)


def start_ray_and_tracking(cfg: Config) -> tuple[MLflowSink, Config]:
    """``init_ray`` while the MLflow run is opened in a thread (MLflow's import, store and run take seconds that
    Ray's start-up spends mostly waiting for its processes), then the config the workers train with
    (``laid_out``: it needs the running cluster). Whichever fails, the other is undone: Ray shut down, or the
    run ended FAILED; a layout the cluster cannot give is a config error and leaves nothing behind (a run this
    start created is deleted with its run file, a reopened one gets its status back)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="adadim-tracking") as pool:
        opening = pool.submit(open_tracking, cfg)
        try:
            init_ray(cfg)  # on the main thread: Ray installs its SIGTERM handler only there
        except BaseException:
            if opening.exception() is None:
                opening.result().close("FAILED")
            raise
    try:
        sink = opening.result()
    except BaseException:
        shutdown_ray()
        raise
    try:
        return sink, laid_out(cfg)
    except ConfigError:
        sink.abandon()
        if sink.created:
            for leftover in (run_location(cfg) / RUN_ID_FILE, run_location(cfg)):  # the directory only if empty
                if leftover.exists():
                    leftover.delete()
        shutdown_ray()
        raise


def log_tail(sink: MLflowSink, board, epochs: int) -> None:
    """``time/tail_s``: from the last training step (rank 0's last progress post) until the driver has the
    result: evaluation, baselines, checkpoint, export and the worker group's shut-down."""
    try:
        latest = board.read()
    except Exception as err:  # noqa: BLE001 - a missing figure must never fail a finished job
        logger.warning("no tail timing (%s)", type(err).__name__)
        return
    if latest is not None and latest.get("step") == latest.get("total_steps"):
        sink.log({"time/tail_s": max(time.time() - latest["time"], 0.0)}, step=epochs)


def fail_fast_http() -> None:
    """The driver's own MLflow calls (end of run, summary) fail in seconds rather than after MLflow's
    minutes of retries when the server is down; the workers get the same through their runtime env."""
    for key, value in WORKER_MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def check_tracking_store(cfg: Config) -> None:
    """The tracking store must work from every node. Checked here, with the driver's environment, not in the
    config's validation, which the workers repeat in theirs (where MLFLOW_TRACKING_URI may not be set)."""
    if is_uri(cfg.run.storage_path) and cfg.tracking.uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("tracking.uri: must name an MLflow server when run.storage_path is a URI "
                          f"({cfg.run.storage_path}); the default sqlite file needs a local directory")
    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path)
    unsafe = network_sqlite_store(uri)
    if unsafe:
        raise ConfigError(
            f"tracking.uri: {unsafe}; SQLite's locking is not safe there when the driver and rank 0 write from "
            "different nodes. Name an MLflow server instead (tracking.uri=http://HOST:5000 or MLFLOW_TRACKING_URI; the "
            "README's \"From laptop to cluster\" shows one per deployment)"
        )


def node_cpu_layout(nodes: list[dict], layout: str = "one_worker_per_node") -> tuple[int, int]:
    """(workers, CPUs per worker) of one worker per node (``training.layout`` ``layout``) on a cluster described
    by ``ray.nodes()``: one worker per live node that has a CPU, each holding the CPUs of the node with the fewest
    (so that one fits on every node; a head started with no CPUs holds none)."""
    cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in nodes if node.get("Alive")]
    cpus = [count for count in cpus if count >= 1]
    if not cpus:
        raise ConfigError(f"training.layout: {layout} found no live node with a CPU")
    return len(cpus), min(cpus)


def laid_out(cfg: Config, nodes: list[dict] | None = None) -> Config:
    """The config the workers train with: ``cfg`` itself, or, when ``training.layout`` lays workers out one per
    node (``one_worker_per_node``, or ``auto`` without GPUs), with ``training.num_workers`` and ``cpus_per_worker``
    taken from the running cluster (``nodes``: ``ray.nodes()``). The run directory's config.yaml and the MLflow
    params keep the layout as given; the workers tag the run with the one they ran (``machine.layout``)."""
    if not cfg.training.one_worker_per_node:
        return cfg
    layout = cfg.training.layout
    if nodes is None:
        import ray

        nodes = ray.nodes()
    workers, cpus = node_cpu_layout(nodes, layout)
    if cfg.training.global_batch_size % workers:
        raise ConfigError(f"training.layout: {layout} gives {workers} workers (one per node), which do not "
                          f"divide training.global_batch_size={cfg.training.global_batch_size}")
    logger.info("training.layout=%s: %d worker%s × %d CPUs, one per node (training.num_workers and "
                "cpus_per_worker are taken from the cluster)", layout, workers, "" if workers == 1 else "s", cpus)
    return config_with_overrides(cfg.model_dump(mode="json"),
                                 [f"training.num_workers={workers}", f"training.cpus_per_worker={cpus}"])


def warn_if_sqlite_across_nodes(cfg: Config) -> None:
    import ray

    uri = resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if uri.startswith("sqlite:") and len(nodes) > 1:
        logger.warning("tracking: a SQLite store (%s) on a cluster of %d nodes: rank 0 may run on another node, "
                       "which must see this very file; name an MLflow server (tracking.uri) for multi-node jobs",
                       uri, len(nodes))


ADDED_SINCE = "(absent: the key was added after this run started)"


def resume_changes(cfg: Config) -> list[tuple[str, Any, Any]] | None:
    """What this start changes in a run that started before: [(key, was, now)], [] for an unchanged resume,
    None on a first start. A *finished* job with changes is refused: it would not be trained again, so the
    changes would be silently ignored and the old result reported as if it were theirs."""
    previous = read_run_file(cfg, "config.yaml")
    if not previous:
        return None
    saved = yaml.safe_load(previous)
    was, now = flatten(with_defaults(saved)), flatten(storable(cfg))  # compared as stored: credentials masked
    changes = [(key, was.get(key), now.get(key)) for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    # Keys added to the service since the run started take their defaults, which may not be how the run was
    # trained (model.sync_batchnorm came after runs with per-worker BatchNorm): recorded, not refused.
    saved_keys, changed = set(flatten(saved)), {key for key, _, _ in changes}
    added = [(key, ADDED_SINCE, value) for key, value in now.items() if key not in saved_keys | changed]
    checkpoint = local_resume_checkpoint(cfg)
    done = load_state(checkpoint)["epoch"] if checkpoint is not None else 0
    if changes and done >= cfg.training.trained_epochs:
        listed = "; ".join(f"{key} was {mask_credentials(repr(old))}, now {mask_credentials(repr(new))}"
                           for key, old, new in changes[:5])
        more = f" (and {len(changes) - 5} more)" if len(changes) > 5 else ""
        raise ConfigError(
            f"run.name: {cfg.run.name} has finished ({done} of {cfg.training.trained_epochs} epochs), so this start "
            f"would not train and would report the old result, ignoring what changed: {listed}{more}. Start a new job "
            "with another run.name, or add --fresh to redo this one (the old run directory is kept aside)"
        )
    return changes + added


def record_resume(sink: MLflowSink, cfg: Config, changes: list[tuple[str, Any, Any]]) -> None:
    """Params are written once, on the first start (MLflow params are immutable); every later start of the
    run is recorded as tags ``resume.N.*`` instead: the epoch it resumes from and each key it changed."""
    checkpoint = local_resume_checkpoint(cfg)
    epoch = load_state(checkpoint)["epoch"] if checkpoint is not None else 0
    try:
        tags = sink.client.get_run(sink.run_id).data.tags
        number = int(tags.get("resume.count", "0")) + 1
        described = "; ".join(f"{key}: {mask_credentials(json.dumps(old))} -> {mask_credentials(json.dumps(new))}"
                              for key, old, new in changes) or "none"
        for key, value in {"resume.count": str(number), f"resume.{number}.from_epoch": str(epoch),
                           f"resume.{number}.changes": described[:7900]}.items():
            sink.client.set_tag(sink.run_id, key, value)
    except Exception as err:  # noqa: BLE001 - the record is worth a warning, not a lost job
        logger.warning("tracking: could not record this resume in MLflow (%s: %s)", type(err).__name__,
                       mask_credentials(str(err)))
        return
    if changes:
        logger.info("resume %d of run %s (from epoch %d) changes: %s", number, cfg.run.name, epoch, described)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def local_resume_checkpoint(cfg: Config) -> Location | None:
    """The newest complete checkpoint in the run directory, local or on an object store (the name is older than
    object-store support)."""
    return latest_complete_checkpoint(run_location(cfg), cfg.training.strategy)


def set_controller_defaults() -> None:
    """Ray Train controller settings for the jobs this process starts (a value set by the user wins)."""
    # Ray Train's controller sees the workers' last report, then that they have finished, each at its next poll
    # of them: every 2 s by default, so up to 4 s of each job's tail; every 0.2 s costs a few small actor calls
    # a second (the controller reads this from the environment of the process that creates it).
    os.environ.setdefault(CONTROLLER_POLL_ENV, CONTROLLER_POLL_S)
    # Ray Train's preemption watcher (an actor whose process starts with every job, for observability of spot
    # instances' preemption notices) competes with the first steps for CPU; RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1
    # brings it back.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def build_trainer(cfg: Config, run_id: str | None, callbacks: list | None = None, resume_from: Location | None = None,
                  progress=None, stamps: dict[str, float] | None = None, standalone: bool = False):
    """Ray Train's trainer for ``cfg``. ``standalone``: the driver ends with this one job (``adadim_dist.run``,
    not a Tune trial), see ``torch_trainer_class``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from .worker import train_loop_per_worker

    set_controller_defaults()
    return torch_trainer_class(standalone)(
        train_loop_per_worker,
        # Ray 2.60 deprecates resume_from_checkpoint: the worker weighs this path against get_checkpoint().
        train_loop_config={"config": cfg.model_dump(mode="json"), "mlflow_run_id": run_id,
                           "resume_dir": resume_from.uri if resume_from else None,  # a path or a URI
                           "tracking_uri": resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path),
                           "progress_board": progress,
                           "stamps": stamps or {},  # start-up timeline (training/timing.py)
                           "run_dir": run_location(cfg).uri},
        scaling_config=ScalingConfig(
            num_workers=cfg.training.num_workers,
            use_gpu=cfg.training.use_gpu,
            resources_per_worker={"CPU": cfg.training.cpus_per_worker},
            placement_strategy=cfg.training.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
            callbacks=callbacks or None,
            # Rank 0 must not stall for minutes in MLflow's retry loop when the server is down: it buffers.
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )


def worker_env() -> dict[str, str]:
    """The training workers' environment variables: MLflow's retries, and glibc's malloc settings (each one unless
    the driver's environment sets it). Ray sets them when it starts a worker's process, before its first malloc."""
    return {**WORKER_MLFLOW_ENV, **{key: os.environ.get(key, value) for key, value in WORKER_MALLOC_ENV.items()}}


@functools.cache
def torch_trainer_class(standalone: bool = False):
    """Ray Train's TorchTrainer, less two default callbacks whose actors this service does not need:

    * its Ray Data hook: the service reads FFCV files, never Ray Datasets, yet Ray Train 2.60 starts a
      dataset-manager actor (one more Python process importing Ray Data, ~2 s of CPU while the workers start)
      for every worker group;
    * for a ``standalone`` job, its placement-group cleaner: a detached actor that removes the workers'
      placement group should the controller die while its driver lives on (a Tune sweep's trials). A standalone
      job's driver ends with its controller, and Ray removes a job's placement groups with the job; meanwhile
      the cleaner's process polls the GCS every second and, like any Ray worker process, wakes ~150 times a
      second, preempting training threads on a machine whose cores all train.

    Ray Train's own class where those hooks are not found."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return TorchTrainer
    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer
    unneeded = (DatasetsCallback, PlacementGroupCleanerCallback) if standalone else (DatasetsCallback,)

    class FFCVTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [callback for callback in callbacks if not isinstance(callback, unneeded)]

    return FFCVTorchTrainer


def start_autoscaling_coordinator() -> None:
    """Start Ray Train's autoscaling coordinator (a detached actor on this node, one per Ray instance) now,
    without waiting: Train's controller asks it for resources before it starts any worker and waits ~2 s for a
    new one's process. Started here, that process comes up while the driver opens its MLflow run and board."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def summarise(cfg: Config, sink: MLflowSink, result) -> dict[str, Any]:
    """The final JSON line: read back from MLflow, so it shows what was recorded, not what was meant; while
    MLflow is unreachable, from the workers' last report (and it says so)."""
    tracking_note = None
    try:
        metrics = sink.client.get_run(sink.run_id).data.metrics
    except Exception as err:  # noqa: BLE001
        metrics = dict(result.metrics or {})
        tracking_note = (f"MLflow unreachable at the end ({type(err).__name__}): figures from the workers' last "
                         f"report; unsent values and the run status are in {unsent_metrics_path(cfg)} (replay with "
                         "python -m adadim_dist.training.tracking replay FILE)")
    first_k = cfg.eval.knn_k[0]
    epochs = int(result.metrics.get("epoch", 0)) if result.metrics else 0
    checkpoint = result.checkpoint.path if result.checkpoint else None
    if checkpoint is not None and is_uri(cfg.run.storage_path):
        checkpoint = str(run_location(cfg) / Path(checkpoint).name)  # Ray's path on the store has no scheme
    # Ray's result holds the newest checkpoint its controller registered; a worker group that failed right after
    # the last report and restarted with nothing left to train leaves a newer one on disk only.
    on_disk = local_resume_checkpoint(cfg)
    disk_epoch = load_state(on_disk)["epoch"] if on_disk is not None else 0
    if disk_epoch > epochs:
        epochs, checkpoint = disk_epoch, str(on_disk)
    summary = {
        "run_id": sink.run_id,
        "experiment": cfg.tracking.experiment,
        "run_name": cfg.run.name,
        "epochs": epochs,
        "knn_k": first_k,
        "knn_top1": metrics.get(f"knn/top1_k{first_k}"),
        "probe_top1": metrics.get("probe/top1"),
        "final_alpha": metrics.get("adadim/alpha"),
        "resumed_from_epoch": int(result.metrics.get("resumed_from_epoch", 0)) if result.metrics else 0,
        "checkpoint": checkpoint,
        "tracking_uri": mask_credentials(resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path)),
        "run_page": run_page(resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path), sink.experiment_id,
                             sink.run_id) if sink.experiment_id else None,
    }
    startup = describe_startup(metrics)
    if startup is not None:
        summary["startup"] = startup
    if "time/tail_s" in metrics:
        summary["tail_s"] = round(metrics["time/tail_s"], 1)
    if tracking_note:
        summary["tracking"] = tracking_note
    if worker_logs_dir is not None:
        summary["worker_logs"] = worker_logs_dir  # the workers' full output (run.verbose=true shows it live)
    if cfg.data.test_path is None:
        summary["evaluation"] = ("label-free (data.test_path=null: no labelled test set, so no kNN, probe or "
                                 "baselines): RankMe, H(R), I(R;Z) and uniformity of the first 2048 training images")
        for key in ("rankme", "h_r", "mi_rz", "uniformity"):
            summary[f"eval_{key}"] = metrics.get(f"eval/{key}")
    for name in ("random", "pixels"):
        key = f"baseline/knn_{name}_top1"
        if key in metrics:
            summary[f"knn_top1_{name}_encoder" if name == "random" else "knn_top1_raw_pixels"] = metrics[key]
    return summary
