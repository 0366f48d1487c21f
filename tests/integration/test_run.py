"""The training service end to end on the real stack: Ray Train (2 workers, gloo), FFCV, MLflow (sqlite) and
DDP. One job is followed through its life: started, its driver killed after epoch 1, the same command run
again (resumes), then continued with an exploding learning rate (stops cleanly, last good checkpoint kept).
DeepSpeed runs through `ray job submit` in test_job_submit.py; a killed worker in tests/reliability."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adadim_dist.training.timing import STEP_PHASES

from ..conftest import REPO, record_fault, run_cli, steps_done_before

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH_METRICS = ["knn/top1_k20", "knn/top1_k200", "probe/top1", "train/epoch_seconds", "spectrum/collapsed_r",
                 "spectrum/collapsed_z", "spectrum/batch_collapsed_r", "spectrum/batch_collapsed_z"]
STEP_METRICS = ["loss/total", "loss/dim", "loss/sample", "loss/invariance", "loss/variance", "loss/covariance",
                "adadim/alpha", "adadim/beta", "info/h_r", "info/mi_rz", "info/erank_r", "info/erank_z",
                "info/uniformity", "info/alignment", "train/lr", "train/images_per_s",
                *(f"time/step_{phase}_ms" for phase in STEP_PHASES)]
SECRET = "AKIA-adadim-test-secret-0123456789"


def smoke_args(betons, storage, name, *extra):
    return [
        "--config", "configs/fmnist_smoke.yaml",
        f"data.train_path={betons['train']}", f"data.test_path={betons['test']}",
        f"run.storage_path={storage}", f"run.name={name}",
        "training.global_batch_size=64", "training.max_steps_per_epoch=6", "training.log_every=2",
        "training.layout=as_given", "training.cpus_per_worker=0.5", "data.num_loader_workers=1",  # 2 DDP workers
        "eval.baselines=false", "eval.every_epochs=1",
        "run.verbose=true",  # the tests read the workers' step lines
        *extra,
    ]


def final_json(stdout: str) -> dict:
    """The summary line; it is the last line the driver prints."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith('{"run_id"'), stdout[-2000:]
    return json.loads(last)


def client_for(summary):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=summary["tracking_uri"])


def metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def wait_for(log_path: Path, pattern: str, process: subprocess.Popen, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(pattern, log_path.read_text()):
            return
        if process.poll() is not None:
            raise AssertionError(f"ended ({process.returncode}) before {pattern!r}:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"timed out waiting for {pattern!r}:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def job(tiny_betons, tmp_path_factory, ray_cluster):
    """Start a 2-epoch DDP job (a credential in its environment), kill its driver during epoch 2, run the
    same command again. Returns the storage path, the first run id and the second (resuming) process."""
    storage = tmp_path_factory.mktemp("ddp")
    # Baselines on: both workers compute them (in the resumed epoch 2), each on its part of the bank and test set.
    # Synchronized BatchNorm on (the demo config keeps it off for its CPU budget): DDP with GlobalBatchNorm.
    args = smoke_args(tiny_betons, storage, "ddp", "training.epochs=2", "eval.baselines=true",
                      "model.sync_batchnorm=true")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ray_cluster["env"],
           "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET}
    log = storage / "first.log"
    with log.open("w") as handle:
        driver = subprocess.Popen([sys.executable, "-m", "adadim_dist.run", *args], cwd=REPO, stdout=handle,
                                  stderr=subprocess.STDOUT, start_new_session=True, env=env)
    wait_for(log, r"epoch 1/2 done", driver)
    wait_for(log, r"epoch 2 step 2/", driver)
    lost_steps = steps_done_before(log.read_text(), 2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    first_run_id = json.loads((storage / "ddp" / "mlflow_run.json").read_text())["run_id"]
    rerun_at = time.time()
    second = run_cli(args, cwd=REPO, env={**ray_cluster["env"], "AWS_SECRET_ACCESS_KEY": SECRET})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    record_fault("driver SIGKILL mid-epoch 2, same command re-run", seconds_to_finish=round(time.time() - rerun_at),
                 steps_lost=lost_steps, recovered=True)
    return {"storage": storage, "args": args, "first_run_id": first_run_id, "first_log": log.read_text(),
            "second": second, "summary": final_json(second.stdout)}


def test_ddp_run_logs_every_metric_and_checkpoints(job, tmp_path):
    """A 2-worker DDP run produces one MLflow run with every documented metric, the encoder and a checkpoint."""
    summary = job["summary"]
    assert summary["epochs"] == 2 and Path(summary["checkpoint"]).name == "epoch_0002"
    assert (Path(summary["checkpoint"]) / "model.pt").is_file()
    for key in ("run_id", "experiment", "knn_top1", "probe_top1", "final_alpha"):
        assert summary[key] is not None, key
    client = client_for(summary)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert not [k for k in EPOCH_METRICS + STEP_METRICS if k not in run.data.metrics]
    assert run.data.params["training.strategy"] == "ddp" and run.data.params["training.num_workers"] == "2"
    assert 0.0 <= summary["final_alpha"] <= 1.0
    assert "encoder" in [a.path for a in client.list_artifacts(summary["run_id"])]
    # The summary names the run's own page, in MLflow's training view (scripts/mlflow_ui_check.py opens it).
    assert summary["run_page"] == (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
                                   f"{summary['run_id']}?workflowType=machine_learning")
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["machine.cpu"] and "from epoch 0: " in run.data.tags["machine.cpu_history"]
    assert run.data.tags["machine.layout"] == "2 workers × 0.5 CPUs"
    # Dimensional-collapse diagnostics of every evaluation: spectra as JSON and a figure per epoch.
    spectra = sorted(a.path for a in client.list_artifacts(summary["run_id"], "spectrum"))
    assert spectra == [f"spectrum/epoch_000{e}.{ext}" for e in (1, 2) for ext in ("json", "png")]
    assert 0 <= run.data.metrics["spectrum/collapsed_z"] <= run.data.metrics["spectrum/dim_z"] == 512
    last = json.loads(Path(client.download_artifacts(summary["run_id"], "spectrum/epoch_0002.json", str(tmp_path)))
                      .read_text())
    assert sorted(last) == ["r", "r_batch", "z", "z_batch"]
    # The global training batch (2 workers' rows): N rows span at most N − 1 centred directions of Z's 512.
    global_batch = int(run.data.params["training.global_batch_size"])
    assert len(last["z_batch"]) == min(global_batch, 512)  # min(N, D) singular values
    assert run.data.metrics["spectrum/batch_collapsed_z"] >= 512 - (global_batch - 1)
    # Where the (resumed) job's time went: the start-up phases add up to the time to the first step.
    phases = ["time/ray_s", "time/workers_s", "time/loaders_s", "time/model_s", "time/first_step_s"]
    assert sum(run.data.metrics[k] for k in phases) == pytest.approx(run.data.metrics["time/to_first_step_s"],
                                                                     abs=0.01)
    assert summary["startup"].startswith(f"{run.data.metrics['time/to_first_step_s']:.0f} s to the first step (Ray")
    assert 0 < summary["tail_s"] == pytest.approx(run.data.metrics["time/tail_s"], abs=0.1)
    assert run.data.metrics["time/eval_s"] >= run.data.metrics["time/eval_extract_s"] > 0


def test_baselines_reach_rank0_and_match_a_direct_computation(job):
    """The raw-pixel kNN that both ranks computed (each on its part of the bank and of the test set, merged on
    rank 0), logged and printed, equals the same kNN computed here from the source images (all 1,024 as the
    bank, the 512 test images as queries)."""
    import numpy as np

    from adadim_dist.config import DataConfig
    from adadim_dist.data.sources import read_source
    from adadim_dist.data.writer import to_rgb
    from adadim_dist.evaluation import knn_top1

    summary = job["summary"]
    assert 0.0 <= summary["knn_top1_random_encoder"] <= 100.0
    assert f"raw pixels     : {summary['knn_top1_raw_pixels']:.2f}%" in job["second"].stdout

    data = DataConfig()

    def pixels(split, limit):
        source = read_source("fashion_mnist", split)
        images = np.stack([to_rgb(source.images[i], pad_to=32) for i in range(limit)]).astype(np.float32) / 255
        images = (images - np.array(data.mean, np.float32)) / np.array(data.std, np.float32)
        return torch.from_numpy(images.reshape(limit, -1)), torch.from_numpy(source.labels[:limit])

    bank, bank_labels = pixels("train", 1024)
    queries, query_labels = pixels("test", 512)
    expected = knn_top1(bank, bank_labels, queries, query_labels, k=20, temperature=0.07, num_classes=10)
    assert abs(summary["knn_top1_raw_pixels"] - expected) <= 0.2, (summary["knn_top1_raw_pixels"], expected)


def test_killed_driver_rerun_resumes_into_same_mlflow_run(job):
    """Stopped (driver killed) after epoch 1, the same command continues at epoch 2 in the same MLflow run;
    the per-epoch series has no gap and no duplicate."""
    summary = job["summary"]
    assert summary["run_id"] == job["first_run_id"] and summary["resumed_from_epoch"] == 1
    client = client_for(summary)
    for key in EPOCH_METRICS:
        assert metric_steps(client, summary["run_id"], key) == [1, 2], key
    # Epoch 1 (steps 1–6) is not trained again: its step metrics were logged once, by the first driver.
    steps = metric_steps(client, summary["run_id"], "loss/total")
    assert [s for s in steps if s <= 6] == [2, 4, 6] and steps[-1] == 12


def test_credentials_in_environment_never_reach_mlflow_or_logs(job):
    summary = job["summary"]
    run = client_for(summary).get_run(summary["run_id"])
    assert SECRET not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert SECRET not in job["first_log"] + job["second"].stdout + job["second"].stderr
    token_file = Path.home() / ".ray" / "auth_token"
    if token_file.is_file() and token_file.read_text().strip():
        token = token_file.read_text().strip()
        assert token not in json.dumps(run.data.params) and token not in job["second"].stdout + job["second"].stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(job, ray_cluster):
    """Continuing the job with a temperature so small that the NT-Xent logits overflow (inf − inf = NaN) stops
    it with one line naming the epoch, step and non-finite terms; no checkpoint of epoch 3 is written, the
    epoch-2 one stays finite, the run is FAILED."""
    storage = job["storage"]
    args = [a for a in job["args"] if not a.startswith("training.epochs=")]
    out = run_cli(args + ["training.epochs=3", "objective.temperature=1.0e-40"], cwd=REPO,
                  env=ray_cluster["env"])
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    error = out.stderr.strip().splitlines()[-1]
    assert re.search(r"non-finite loss or gradient at epoch 3 step \d+ \(non-finite terms: .+\)", error), error
    assert sorted(p.name for p in (storage / "ddp").glob("epoch_*")) == ["epoch_0001", "epoch_0002"]
    state = torch.load(storage / "ddp" / "epoch_0002" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert client_for(job["summary"]).get_run(job["summary"]["run_id"]).info.status == "FAILED"
