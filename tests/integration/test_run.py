"""The training service end to end on the real stack: Ray Train (2 workers, gloo), FFCV, MLflow (sqlite),
DDP and DeepSpeed. Runs are kept to a few steps; FFCV's per-loader JIT dominates their time."""

from __future__ import annotations

import json

import pytest

from ..conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH_METRICS = ["knn/top1_k20", "knn/top1_k200", "probe/top1", "train/epoch_seconds"]
STEP_METRICS = ["loss/total", "loss/dim", "loss/sample", "loss/invariance", "loss/variance", "loss/covariance",
                "adadim/alpha", "adadim/beta", "info/h_r", "info/mi_rz", "info/erank_r", "info/erank_z",
                "info/uniformity", "info/alignment", "train/lr", "train/images_per_s"]


def smoke_args(betons, storage, name, *extra):
    return [
        "--config", "configs/fmnist_smoke.yaml",
        f"data.train_path={betons['train']}", f"data.test_path={betons['test']}",
        f"run.storage_path={storage}", f"run.name={name}",
        "training.global_batch_size=64", "training.max_steps_per_epoch=4", "training.log_every=2",
        "training.cpus_per_worker=0.5", "eval.baselines=false", *extra,
    ]


def final_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def client_for(summary):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=summary["tracking_uri"])


def epoch_series(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def ddp_first_epoch(tiny_betons, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ddp")
    out = run_cli(smoke_args(tiny_betons, storage, "ddp-resume", "training.epochs=1"), cwd=_repo())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return storage, final_json(out.stdout)


def _repo():
    from ..conftest import REPO

    return REPO


def test_ddp_run_logs_every_metric_and_checkpoints(ddp_first_epoch):
    """A 2-worker DDP run produces one MLflow run with every documented metric and a checkpoint."""
    _, summary = ddp_first_epoch
    assert summary["epochs"] == 1 and summary["checkpoint"]
    for key in ("run_id", "experiment", "knn_top1", "probe_top1", "final_alpha"):
        assert summary[key] is not None, key
    run = client_for(summary).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    missing = [k for k in EPOCH_METRICS + STEP_METRICS if k not in run.data.metrics]
    assert not missing
    assert run.data.params["training.strategy"] == "ddp" and run.data.params["training.num_workers"] == "2"
    assert 0.0 <= summary["final_alpha"] <= 1.0
    artifacts = [a.path for a in client_for(summary).list_artifacts(summary["run_id"])]
    assert "encoder" in artifacts


def test_rerun_with_same_name_resumes_into_same_mlflow_run(ddp_first_epoch, tiny_betons):
    """Stop after epoch 1, run again: it continues at epoch 2 in the same MLflow run; the per-epoch series
    has no gap and no duplicate."""
    storage, first = ddp_first_epoch
    out = run_cli(smoke_args(tiny_betons, storage, "ddp-resume", "training.epochs=2"), cwd=_repo())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    second = final_json(out.stdout)
    assert second["run_id"] == first["run_id"] and second["epochs"] == 2
    assert "resumed from checkpoint after epoch 1" in out.stdout + out.stderr
    client = client_for(second)
    assert epoch_series(client, second["run_id"], "knn/top1_k20") == [1, 2]
    steps = epoch_series(client, second["run_id"], "loss/total")
    assert steps == sorted(set(steps)) and steps[-1] == 8  # 2 epochs × 4 steps, no duplicate step


def test_deepspeed_zero2_run(tiny_betons, tmp_path):
    """Two workers under DeepSpeed ZeRO-2 (CPU accelerator, gloo) through the same entry point."""
    out = run_cli(
        smoke_args(tiny_betons, tmp_path, "zero2", "training.epochs=1", "training.strategy=deepspeed",
                   "training.deepspeed.zero_stage=2", "optim.name=adamw", "optim.lr=0.002"),
        cwd=_repo(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = final_json(out.stdout)
    run = client_for(summary).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["training.strategy"] == "deepspeed"
    assert all(k in run.data.metrics for k in STEP_METRICS)
    assert summary["checkpoint"] and summary["epochs"] == 1
