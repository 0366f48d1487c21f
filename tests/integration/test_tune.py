"""A real Ray Tune sweep (Train V2 trial functions, ASHA) over a tiny Fashion-MNIST set, its MLflow parent and
nested child runs, the best-config YAML, and the comparison report over the trials."""

from __future__ import annotations

import json

import pytest
import yaml

from ..conftest import REPO
from adadim_dist.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep(tiny_betons, tmp_path_factory, ray_cluster):
    import subprocess
    import os
    import sys

    root = tmp_path_factory.mktemp("sweep")
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny-sweep",
        "base_config": str(REPO / "configs/fmnist_smoke.yaml"),
        "overrides": [f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                      f"run.storage_path={root / 'runs'}", "training.epochs=2", "training.global_batch_size=64",
                      "training.max_steps_per_epoch=3", "training.log_every=3", "eval.baselines=false",
                      "eval.knn_k=[20]", "tracking.experiment=tiny-sweep", "model.small_cnn_downsample=maxpool"],
        # rankme is the effective rank of R (8·width features). After 3 warm-up steps of the max-pooling CNN
        # (the encoder these figures were measured with) it is still ~42 for width 16 and ~10 for width 4:
        # the two width-4 trials start after the two width-16 ones and score below the ASHA median at epoch 1
        # whatever order the results arrive in, so they are stopped; the first trial to reach epoch 1 has
        # nothing to compare with and always continues.
        "metric": "rankme",
        "num_samples": 1,
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "trial": {"num_workers": 1, "cpus_per_worker": 0.9, "trial_cpus": 0.1},
        "search_space": {"objective.gamma": {"type": "loguniform", "low": 0.01, "high": 10.0},
                         "objective.mi_sign": {"type": "choice", "values": ["maximize", "minimize"]},
                         "optim.lr": {"type": "loguniform", "low": 0.01, "high": 0.3},
                         "model.small_cnn_width": {"type": "grid", "values": [16, 16, 4, 4]}},
    }))
    out = subprocess.run([sys.executable, "-m", "adadim_dist.tune", "--config", str(sweep_file)], cwd=REPO,
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, **ray_cluster["env"], "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return root, summary, out


@pytest.fixture(scope="module")
def resumed_sweep(tiny_betons, tmp_path_factory, ray_cluster):
    """A 3-trial FIFO sweep, one trial at a time, its driver killed once the third trial has started, then the
    same command run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("resume")
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "resume-sweep",
        "base_config": str(REPO / "configs/fmnist_smoke.yaml"),
        "overrides": [f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                      f"run.storage_path={root / 'runs'}", "training.epochs=1", "training.global_batch_size=64",
                      "training.max_steps_per_epoch=3", "training.log_every=3", "eval.baselines=false",
                      "eval.knn_k=[20]", "tracking.experiment=resume-sweep"],
        "metric": "knn", "num_samples": 3, "max_concurrent_trials": 1, "scheduler": {"name": "fifo"},
        "trial": {"num_workers": 1, "cpus_per_worker": 0.9, "trial_cpus": 0.1},
        "search_space": {"objective.gamma": {"type": "loguniform", "low": 0.1, "high": 10.0}},
    }))
    command = [sys.executable, "-m", "adadim_dist.tune", "--config", str(sweep_file)]
    env = {**os.environ, **ray_cluster["env"], "PYTHONUNBUFFERED": "1"}
    with (root / "first.log").open("w") as log:
        first = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    deadline = time.time() + 300
    while not list((root / "runs").glob("resume-sweep-*_00002/mlflow_run.json")):
        assert first.poll() is None, (root / "first.log").read_text()[-4000:]
        assert time.time() < deadline, (root / "first.log").read_text()[-4000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    parent_before = json.loads((root / "runs/resume-sweep/mlflow_parent_run.json").read_text())["run_id"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return root, parent_before, json.loads(out.stdout.strip().splitlines()[-1]), out


def test_interrupted_sweep_resumes_into_the_same_runs(resumed_sweep):
    from mlflow.tracking import MlflowClient

    root, parent_before, summary, out = resumed_sweep
    assert "resuming sweep" in out.stdout
    assert summary["parent_run_id"] == parent_before and summary["num_trials"] == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    assert client.get_run(parent_before).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("resume-sweep")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_before}'")
    assert len(children) == 3  # a re-run trial reopens its child run instead of adding one
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "knn/top1_k20")]
        assert steps == [1], steps
    assert load_config(summary["best_config"]).objective.gamma == summary["best_params"]["objective.gamma"]


def test_fifo_trials_run_one_after_another_in_one_process(resumed_sweep):
    """Under FIFO the second trial starts in the process the first one finished in (Tune's reuse_actors), so it
    does not pay the imports again; each trial's results carry the process id Tune ran it in."""
    root = resumed_sweep[0]
    first_pids = []
    for trial in ("00000", "00001"):  # both finished before the first driver was killed
        [result] = (root / "runs" / "resume-sweep").glob(f"run_trial_*_{trial}_*/result.json")
        # The first row is the first driver's (the re-run may run a trial again, in its own process).
        first_pids.append(json.loads(result.read_text().splitlines()[0])["pid"])
    assert first_pids[0] == first_pids[1], first_pids


def test_sweep_has_parent_and_nested_child_runs(sweep):
    from mlflow.tracking import MlflowClient

    root, summary, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-sweep")
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.metric"] == "rankme"
    assert parent.data.metrics["best_score"] == summary["best_score"] >= summary["worst_score"]
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")
        assert "info/erank_r" in child.data.metrics and "sweep.objective.gamma" in child.data.params


def test_asha_stops_at_least_one_trial_early(sweep):
    from mlflow.tracking import MlflowClient

    root, summary, _ = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-sweep")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    epochs = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "train/epoch_seconds")) for c in children}
    assert min(epochs.values()) == 1 and max(epochs.values()) == 2, epochs
    for child in children:  # a trial stopped early is KILLED, not FAILED
        if epochs[child.info.run_id] == 1:
            assert child.info.status == "KILLED"


def test_best_config_is_accepted_by_run(sweep):
    _, summary, _ = sweep
    cfg = load_config(summary["best_config"])
    for key, value in summary["best_params"].items():
        section, *rest = key.split(".")
        node = getattr(cfg, section)
        for part in rest:
            node = getattr(node, part)
        assert node == value


def test_compare_over_the_sweep(sweep, tmp_path):
    from adadim_dist.compare import compare

    root, summary, _ = sweep
    table, plots, _ = compare(f"sqlite:///{root / 'runs' / 'mlflow.db'}", "tiny-sweep", None, tmp_path)
    assert len([line for line in table.splitlines()[2:] if line.startswith("|")]) == 4
    assert all(p.stat().st_size > 5000 for p in plots)
    assert "objective.gamma" in table.splitlines()[0] and "sweep.objective.gamma" not in table.splitlines()[0]
