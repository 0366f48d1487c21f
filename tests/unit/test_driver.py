"""Driver checks that run before Ray starts (--fresh, dataset size, path resolution, run files), the trainer's
hooks, and the local Ray instance a job starts."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from adadim_dist.config import ConfigError, load_config
from adadim_dist.training.driver import (
    check_dataset_fits,
    laid_out,
    read_run_file,
    resolve_paths,
    start_fresh,
    torch_trainer_class,
    write_run_file,
)

REPO = Path(__file__).resolve().parents[2]


def test_fresh_moves_the_previous_run_aside_instead_of_deleting_it(tmp_path):
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job"]))
    write_run_file(cfg, "mlflow_run.json", '{"run_id": "abc"}')
    (tmp_path / "job" / "epoch_0001").mkdir()
    start_fresh(cfg)
    assert read_run_file(cfg, "mlflow_run.json") is None and not (tmp_path / "job").exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("job.old-")]
    assert len(aside) == 1 and (aside[0] / "epoch_0001").is_dir()


@pytest.mark.parametrize("num_samples, subset, ok", [(1024, None, True), (1024, 100, False), (255, None, False)])
def test_each_worker_needs_one_full_batch(num_samples, subset, ok):
    cfg = load_config(None, ["training.global_batch_size=256", "training.num_workers=2"]
                      + ([f"data.subset={subset}"] if subset else []))
    info = SimpleNamespace(num_samples=num_samples)
    if ok:
        check_dataset_fits(cfg, info)
    else:
        with pytest.raises(ConfigError, match="^training.global_batch_size: 256 needs 128 images per worker"):
            check_dataset_fits(cfg, info)


def _node(cpus: float, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, "memory": 1e9} if cpus else {"memory": 1e9}}


@pytest.mark.parametrize("nodes, workers, cpus", [
    ([_node(2)], 1, 2),  # a laptop or this CI machine: one worker holding both cores
    ([_node(0), _node(8), _node(8), _node(4), _node(16, alive=False)], 3, 4),  # CPU-less head, a dead node
])
def test_one_worker_per_node_takes_each_live_nodes_cpus_and_keeps_the_rest(nodes, workers, cpus):
    given = load_config(None, ["training.layout=one_worker_per_node", "training.num_workers=2",
                               "training.cpus_per_worker=1", "training.global_batch_size=384", "optim.lr=0.7"])
    cfg = laid_out(given, nodes)
    assert (cfg.training.num_workers, cfg.training.cpus_per_worker) == (workers, cpus)
    assert cfg.model_dump(exclude={"training"}) == given.model_dump(exclude={"training"})
    assert cfg.training.global_batch_size == 384 and cfg.optim.lr == 0.7


def test_auto_lays_out_one_worker_per_node_on_cpus_and_keeps_one_worker_per_gpu():
    cpu = laid_out(load_config(None, ["training.layout=auto", "training.num_workers=2"]), [_node(4), _node(4)])
    assert (cpu.training.num_workers, cpu.training.cpus_per_worker) == (2, 4)
    cpu = laid_out(load_config(None, ["training.layout=auto", "training.num_workers=2"]), [_node(2)])
    assert (cpu.training.num_workers, cpu.training.cpus_per_worker) == (1, 2)
    gpu = load_config(None, ["training.layout=auto", "training.use_gpu=true", "training.num_workers=8"])
    assert laid_out(gpu, [_node(16), _node(16)]) is gpu  # one worker per GPU, as given
    with pytest.raises(ConfigError, match=r"^training\.layout: auto gives 3 workers .* "
                                          r"training\.global_batch_size=256$"):
        laid_out(load_config(None, ["training.layout=auto"]), [_node(2)] * 3)


def test_the_embedded_default_lays_out_one_worker_per_node_on_cpus():
    default = load_config(REPO / "configs/fmnist_smoke.yaml", [])
    assert default.training.layout == "auto" and default.training.one_worker_per_node
    on_gpus = load_config(REPO / "configs/fmnist_smoke.yaml", ["training.use_gpu=true", "training.num_workers=4"])
    assert not on_gpus.training.one_worker_per_node


def test_the_layout_as_given_is_left_alone_and_a_layout_that_cannot_work_is_refused_in_one_line():
    given = load_config(None, ["training.num_workers=2", "training.cpus_per_worker=1"])
    assert laid_out(given, [_node(2)]) is given
    four_nodes = [_node(2)] * 3
    with pytest.raises(ConfigError, match=r"^training\.layout: one_worker_per_node gives 3 workers .* "
                                          r"training\.global_batch_size=256$"):
        laid_out(load_config(None, ["training.layout=one_worker_per_node"]), four_nodes)
    with pytest.raises(ConfigError, match=r"^training\.layout: one_worker_per_node found no live node with a CPU"):
        laid_out(load_config(None, ["training.layout=one_worker_per_node"]), [_node(0), _node(4, alive=False)])
    with pytest.raises(ConfigError, match=r"^training\.layout: one_worker_per_node is for CPU-only jobs"):
        load_config(None, ["training.layout=one_worker_per_node", "training.use_gpu=true"])


def test_relative_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(None, ["data.train_path=d/train.beton", "run.storage_path=runs"]))
    assert cfg.data.train_path == tmp_path / "d" / "train.beton" and cfg.run.storage_path == str(tmp_path / "runs")
    remote = resolve_paths(load_config(None, ["run.storage_path=s3://bucket/runs", "tracking.uri=http://m:5000"]))
    assert remote.run.storage_path == "s3://bucket/runs"



def test_remote_storage_needs_a_tracking_server_named_in_the_drivers_environment(monkeypatch):
    """Checked by the driver with its own environment; the workers re-validate the config in theirs, where a
    MLFLOW_TRACKING_URI set on the driver only may be absent, and must not fail there."""
    from adadim_dist.config import config_from_dict
    from adadim_dist.training.driver import check_tracking_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config(None, ["run.storage_path=s3://bucket/runs"])
    check_tracking_store(cfg)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert config_from_dict(cfg.model_dump(mode="json")) == cfg  # a worker without the variable
    with pytest.raises(ConfigError, match="^tracking.uri: must name an MLflow server"):
        check_tracking_store(cfg)


def test_ray_and_tracking_start_together_and_a_failure_of_either_undoes_the_other(monkeypatch):
    """The MLflow run opens in a thread while Ray starts: when the tracking store fails, Ray is shut down again;
    when Ray fails, the run just opened is ended FAILED (never left RUNNING)."""
    from adadim_dist.training import driver

    events = []

    class Sink:
        def close(self, status):
            events.append(("closed", status))

    def failing_tracking(cfg):
        raise driver.TrackingUnavailableError("tracking.uri: down")

    def failing_ray(cfg):
        raise RuntimeError("ray did not start")

    monkeypatch.setattr(driver, "init_ray", lambda cfg: events.append("ray started"))
    monkeypatch.setattr(driver, "shutdown_ray", lambda: events.append("ray shut down"))
    monkeypatch.setattr(driver, "open_tracking", failing_tracking)
    with pytest.raises(driver.TrackingUnavailableError):
        driver.start_ray_and_tracking(None)
    assert events == ["ray started", "ray shut down"]

    events.clear()
    monkeypatch.setattr(driver, "open_tracking", lambda cfg: Sink())
    monkeypatch.setattr(driver, "init_ray", failing_ray)
    with pytest.raises(RuntimeError, match="ray did not start"):
        driver.start_ray_and_tracking(None)
    assert events == [("closed", "FAILED")]

    monkeypatch.setattr(driver, "init_ray", lambda cfg: events.append("ray started"))
    monkeypatch.setattr(driver, "laid_out", lambda cfg: "the config laid out")
    events.clear()
    sink, trained = driver.start_ray_and_tracking(None)
    assert isinstance(sink, Sink) and trained == "the config laid out" and events == ["ray started"]


def test_a_layout_the_cluster_cannot_give_leaves_no_run_behind(tmp_path, monkeypatch):
    """A real MLflow store; the cluster (3 one-node workers for a batch of 256) stands in for the running one.
    A first start's run is deleted with its run file; a finished run started again keeps its status."""
    from functools import partial

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from adadim_dist.training import driver
    from adadim_dist.training.tracking import resolve_tracking_uri

    events = []
    monkeypatch.setattr(driver, "init_ray", lambda cfg: events.append("ray started"))
    monkeypatch.setattr(driver, "shutdown_ray", lambda: events.append("ray shut down"))
    monkeypatch.setattr(driver, "laid_out", partial(laid_out, nodes=[_node(2)] * 3))
    given = [f"run.storage_path={tmp_path}", "run.name=job"]
    cfg = resolve_paths(load_config(None, [*given, "training.layout=one_worker_per_node"]))
    with pytest.raises(ConfigError, match=r"^training\.layout: one_worker_per_node gives 3 workers"):
        driver.start_ray_and_tracking(cfg)
    assert events == ["ray started", "ray shut down"] and not (tmp_path / "job").exists()
    client = MlflowClient(resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path))
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, run_view_type=ViewType.ACTIVE_ONLY) == []

    finished, _ = driver.start_ray_and_tracking(resolve_paths(load_config(None, given)))  # layout as given
    finished.close("FINISHED")
    with pytest.raises(ConfigError, match=r"^training\.layout"):
        driver.start_ray_and_tracking(cfg)
    assert client.get_run(finished.run_id).info.status == "FINISHED"
    assert read_run_file(cfg, "mlflow_run.json") is not None


def test_the_trainer_starts_no_ray_data_actor_and_a_standalone_job_no_placement_group_cleaner(tmp_path):
    """The service reads FFCV files: Ray Train's dataset hook (an actor process per worker group) is left out,
    and so is the placement-group cleaner (a detached actor process) for a job whose driver ends with it; a Tune
    trial keeps the cleaner, and nothing else is left out. A Ray upgrade that renames either hook makes this
    fail rather than silently keep it."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    def callbacks(trainer_class, **datasets):
        trainer = trainer_class(lambda config: None, scaling_config=ScalingConfig(num_workers=2),
                                run_config=RunConfig(name="job", storage_path=str(tmp_path)), **datasets)
        return [type(callback) for callback in trainer._create_default_callbacks()]

    rays = callbacks(TorchTrainer)
    assert DatasetsCallback in rays and PlacementGroupCleanerCallback in rays
    for standalone, left_out in ((False, {DatasetsCallback}),
                                 (True, {DatasetsCallback, PlacementGroupCleanerCallback})):
        assert issubclass(torch_trainer_class(standalone), TorchTrainer)
        assert callbacks(torch_trainer_class(standalone)) == [kind for kind in rays if kind not in left_out]


def test_training_workers_start_with_the_malloc_settings_of_a_training_step(tmp_path, monkeypatch):
    """The workers' processes start with glibc's malloc settings for a step (one arena, 32 MiB blocks from the
    heap, its top kept; BENCHMARKS.md) beside MLflow's retry settings; a setting in the driver's environment wins."""
    from adadim_dist.training.driver import build_trainer

    for key in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}"]))
    env = build_trainer(cfg, None).run_config.worker_runtime_env["env_vars"]
    assert env == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MALLOC_ARENA_MAX": "1",
                   "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    env = build_trainer(cfg, None).run_config.worker_runtime_env["env_vars"]
    assert env["MALLOC_ARENA_MAX"] == "4" and env["MALLOC_TRIM_THRESHOLD_"] == str(2**30)


def test_the_private_ray_and_deepspeed_hooks_the_service_uses_are_where_it_looks():
    """The service reaches into private places (each falls back to doing nothing, which is safe but slower or
    wrong): Ray Data's autoscaling coordinator (started early), Ray Train's dataset and placement-group-cleaner
    hooks (left out; tested above), Ray's GCS key-value store (the progress board; tested in test_progress) and
    DeepSpeed's ZeRO-3 overflow clean-up (a skipped step). An upgrade that moves one fails here."""
    import deepspeed
    import ray
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (  # noqa: F401
        get_or_create_autoscaling_coordinator,
    )

    from ray._private.node import Node
    from ray.dashboard.modules.reporter import reporter_consts

    assert (ray.__version__, deepspeed.__version__) == ("2.60.0", "0.19.8"), "re-check these hooks after an upgrade"
    assert callable(Node.kill_log_monitor)  # a local instance's log monitor (tested below)
    assert '"REPORTER_UPDATE_INTERVAL_MS"' in inspect.getsource(reporter_consts)  # the node statistics' period
    assert callable(DeepSpeedZeroOptimizer_Stage3._overflow_clean_up)
    assert callable(DeepSpeedZeroOptimizer.reset_cpu_buffers) and callable(DeepSpeedZeroOptimizer.has_overflow)


LOCAL_INSTANCE = textwrap.dedent("""
    import json, sys
    import psutil, ray
    from adadim_dist.config import load_config
    from adadim_dist.training.driver import init_ray

    init_ray(load_config("configs/fmnist_smoke.yaml", sys.argv[1:]))
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        started = []
        for process in psutil.Process().children(recursive=True):
            try:
                started.append({"cmdline": " ".join(process.cmdline()), "environ": process.environ()})
            except psutil.Error:
                pass
        print(json.dumps(started))
    finally:
        ray.shutdown()
""")


@pytest.mark.parametrize("quiet", [True, False])
def test_a_quiet_local_instance_runs_no_log_monitor_and_reads_node_stats_once_a_minute(quiet):
    """A local instance started for a job whose console hides the workers' output runs no log monitor (it reads
    the log files ten times a second for a driver that does not ask), and without a dashboard its agent gathers
    the node's statistics once a minute, not every 5 s; Ray still runs tasks. With run.verbose and run.dashboard
    both stay as Ray starts them."""
    overrides = [] if quiet else ["run.verbose=true", "run.dashboard=true"]
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "REPORTER_UPDATE_INTERVAL_MS")}
    out = subprocess.run([sys.executable, "-c", LOCAL_INSTANCE, *overrides], cwd=Path(__file__).parents[2], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    started = json.loads(out.stdout.strip().splitlines()[-1])
    log_monitors = [p for p in started if "log_monitor.py" in p["cmdline"]]
    agents = [p for p in started if "dashboard/agent.py" in p["cmdline"]]
    assert agents, [p["cmdline"][:80] for p in started]
    assert len(log_monitors) == (0 if quiet else 1)
    assert {p["environ"].get("REPORTER_UPDATE_INTERVAL_MS") for p in agents} == {"60000" if quiet else None}
