"""`ray start --head` + `ray job submit` with token authentication on (SPEC §4): the job, a 2-worker DeepSpeed
ZeRO-2 run, succeeds and its logs hold the final JSON line; a client without the token is refused; the
dashboard listens on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO
from .test_run import STEP_METRICS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")


def submit(address: str, entrypoint: list[str], token: bool, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    if token:
        env["RAY_AUTH_MODE"] = "token"
    return subprocess.run([RAY, "job", "submit", "--address", address, "--", *entrypoint], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dashboard_listens_on_loopback_only(ray_cluster):
    import psutil

    listening = [c.laddr.ip for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_cluster["dashboard_port"]]
    assert listening and set(listening) == {"127.0.0.1"}


def test_client_without_token_is_refused(ray_cluster):
    out = submit(ray_cluster["dashboard"], [sys.executable, "-c", "print('should not run')"], token=False,
                 timeout=120)
    assert out.returncode != 0
    assert "should not run" not in out.stdout
    assert "auth" in (out.stdout + out.stderr).lower()


def test_job_submit_runs_deepspeed_training_and_logs_final_json(ray_cluster, tiny_betons, tmp_path):
    from mlflow.tracking import MlflowClient

    out = submit(ray_cluster["dashboard"], [
        sys.executable, "-m", "adadim_dist.run", "--config", "configs/fmnist_smoke.yaml",
        f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
        f"run.storage_path={tmp_path}", "run.name=job-zero2", "training.epochs=1", "training.global_batch_size=64",
        "training.max_steps_per_epoch=4", "training.log_every=2", "training.cpus_per_worker=0.5",
        "training.strategy=deepspeed", "training.deepspeed.zero_stage=2", "optim.name=adamw", "optim.lr=0.002",
        "eval.baselines=false", "eval.knn_k=[20]",
    ], token=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "succeeded" in (out.stdout + out.stderr)
    summary_lines = [line for line in out.stdout.splitlines() if line.startswith('{"run_id"')]
    assert summary_lines, out.stdout[-3000:]
    summary = json.loads(summary_lines[-1])
    assert summary["epochs"] == 1 and summary["knn_top1"] is not None and summary["checkpoint"]
    run = MlflowClient(tracking_uri=summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["training.strategy"] == "deepspeed"
    assert all(k in run.data.metrics for k in STEP_METRICS)
    assert any(p.name.startswith(("deepspeed", "mp_rank", "zero")) or p.is_dir()
               for p in Path(summary["checkpoint"]).iterdir())
