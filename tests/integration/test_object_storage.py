"""A job whose ``run.storage_path`` is an object store (``s3://...``, a real S3-compatible server on 127.0.0.1:
moto's, in its own process) behaves like one on a local path: a registered checkpoint that lost a file is passed
over for the previous complete one, into the same MLflow run, and a finished job started again with a changed
key is refused with one line. The store's credentials travel in the URI's user info: no object, no output line
and no MLflow param holds them."""

from __future__ import annotations

import json
import re

import pytest

from ..conftest import REPO, record_fault, run_cli
from .test_run import client_for, final_json, metric_steps, smoke_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_job_on_an_object_store_resumes_from_its_last_complete_checkpoint_and_refuses_a_changed_rerun(
        tiny_betons, ray_cluster, s3_server, tmp_path):
    bucket = s3_server.bucket()
    storage = s3_server.uri(bucket, "runs")
    args = smoke_args(tiny_betons, storage, "s3job", "training.epochs=2", "training.max_steps_per_epoch=2",
                      "eval.every_epochs=2", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    first = run_cli(args, cwd=REPO, env=ray_cluster["env"])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = final_json(first.stdout)
    assert summary["epochs"] == 2 and summary["resumed_from_epoch"] == 0
    assert summary["checkpoint"].startswith("s3://") and summary["checkpoint"].endswith("/s3job/epoch_0002")
    stored = s3_server.objects(bucket)
    assert {"runs/s3job/config.yaml", "runs/s3job/mlflow_run.json", "runs/s3job/epoch_0001/state.pt",
            "runs/s3job/epoch_0002/model.pt"} <= set(stored)
    assert json.loads(stored["runs/s3job/mlflow_run.json"])["run_id"] == summary["run_id"]

    # The newest checkpoint, the one Ray registered, loses a file: the same command resumes after epoch 1 (not
    # from scratch) into the same MLflow run, and trains epoch 2 again.
    s3_server.client().delete_object(Bucket=bucket, Key="runs/s3job/epoch_0002/model.pt")
    again = run_cli(args, cwd=REPO, env=ray_cluster["env"])
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    resumed = final_json(again.stdout)
    assert "resumed from checkpoint after epoch 1 " in log, log[-4000:]
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs"] == 2 and resumed["run_id"] == summary["run_id"]
    assert "epoch 1/2 done" not in log and "epoch 2/2 done" in log, log[-4000:]
    assert set(metric_steps(client_for(resumed), resumed["run_id"], "train/epoch_seconds")) == {1, 2}
    assert client_for(resumed).get_run(resumed["run_id"]).data.tags["resume.1.from_epoch"] == "1"
    assert "runs/s3job/epoch_0002/model.pt" in s3_server.objects(bucket)  # written whole again
    record_fault("object store: newest registered checkpoint lost model.pt, same command re-run",
                 resumed_from_epoch=resumed["resumed_from_epoch"], same_run=True)

    # The job has finished: a start with a changed key would not train, so it is refused before any work.
    changed = run_cli([*args, "optim.lr=0.1"], cwd=REPO, env=ray_cluster["env"])
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert re.fullmatch(r"adadim_dist: error: run.name: s3job has finished \(2 of 2 epochs\), so this start would "
                        r"not train .*optim.lr was 0.3, now 0.1.*add --fresh.*", changed.stderr.strip()), changed.stderr

    # The secret in the URI is in no stored object, no printed line and no MLflow param.
    outputs = first.stdout + first.stderr + log + changed.stdout + changed.stderr
    assert s3_server.SECRET_KEY not in outputs
    assert not [key for key, body in s3_server.objects(bucket).items() if s3_server.SECRET_KEY.encode() in body]
    params = client_for(resumed).get_run(resumed["run_id"]).data.params
    assert params["run.storage_path"].startswith(f"s3://***@{bucket}/runs?")
    assert not (REPO / "s3:").exists()  # MLflow's artifacts went beside its database, not under the cwd
