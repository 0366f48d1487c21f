"""The tracking server of the compose and KubeRay deployments, run for real on loopback through the same
entry script (docker/mlflow-server.sh): MLflow's basic-auth app refuses anonymous and wrong credentials,
the training side logs in with the credentials from its environment, and nothing secret reaches MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from ..conftest import REPO, free_port

ADMIN, PASSWORD = "adadim-admin", "correct-horse-battery-42"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_AUTH_DIR": str(tmp / "auth")}
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen(
        ["sh", str(REPO / "docker" / "mlflow-server.sh"), "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp / 'store.db'}", "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()  # the probes' path stays open
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, (tmp / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield {"uri": uri, "auth_dir": tmp / "auth", "log": tmp / "server.log"}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _status(uri: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
    if user is not None:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        return urllib.request.urlopen(request, timeout=120).status
    except urllib.error.HTTPError as err:
        return err.code


def test_anonymous_and_wrong_credentials_are_refused(auth_server):
    assert _status(auth_server["uri"]) == 401
    assert _status(auth_server["uri"], ADMIN, "not-the-password") == 401
    assert _status(auth_server["uri"], ADMIN, PASSWORD) == 200


def test_the_secret_is_not_written_where_others_can_read_it(auth_server):
    config = auth_server["auth_dir"] / "basic_auth.ini"
    assert oct(config.stat().st_mode & 0o777) == "0o600" and PASSWORD not in config.read_text()
    assert PASSWORD not in auth_server["log"].read_text()


def test_a_job_logs_in_with_the_credentials_of_its_environment_and_logs_none(auth_server, tmp_path, monkeypatch):
    from adadim_dist.config import load_config
    from adadim_dist.training.driver import open_tracking, resolve_paths

    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server["uri"])  # as compose and the KubeRay pods set it
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=authed",
                                           "tracking.experiment=auth"]))
    sink = open_tracking(cfg)
    sink.log({"loss/total": 1.5}, step=1)
    assert sink.close("FINISHED")
    run = sink.client.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss/total": 1.5}
    assert run.data.params["tracking.uri"] == "None"  # the URI came from the environment, not the config
    logged = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert PASSWORD not in logged and not (tmp_path / "mlflow.db").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    from adadim_dist.training.driver import TrackingUnavailableError

    with pytest.raises(TrackingUnavailableError, match=r"^tracking.uri: MLflow at http://127.0.0.1:\d+ refused the "
                                                       r"credentials \(HTTP 401\); set MLFLOW_TRACKING_USERNAME"):
        open_tracking(resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=refused"])))


def test_credentials_in_a_server_uri_are_refused_in_one_line_that_says_where_they_go(tmp_path):
    """MLflow's HTTP client cannot use them (it fails to connect while the server is up), and a config's URI is
    written to files: refused before anything starts, the password never echoed."""
    from adadim_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"run.storage_path={tmp_path}", f"tracking.uri=http://{ADMIN}:{PASSWORD}@127.0.0.1:5000"])
    message = str(raised.value)
    assert message.startswith("tracking.uri: an MLflow server's credentials go in MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD") and PASSWORD not in message and "\n" not in message


def test_no_file_a_job_writes_and_no_line_it_prints_holds_the_password(auth_server, tiny_betons, tmp_path,
                                                                      ray_cluster):
    """A whole job against the authenticated server, credentials from the environment: every file under its
    storage (config.yaml, checkpoints' state.pt, mlflow_run.json, logs) and its output are free of them."""
    from ..conftest import run_cli

    out = run_cli(["--config", str(REPO / "configs/fmnist_smoke.yaml"), f"run.storage_path={tmp_path / 'runs'}",
                   f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                   "run.name=secrets", "training.epochs=1", "training.max_steps_per_epoch=2",
                   "training.global_batch_size=64", "eval.bank_size=256", "eval.knn_k=[5]", "eval.baselines=false",
                   "eval.every_epochs=1", "tracking.experiment=secrets"], cwd=REPO,
                  env={**ray_cluster["env"], "MLFLOW_TRACKING_URI": auth_server["uri"],
                       "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert PASSWORD not in out.stdout + out.stderr
    written = [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]
    assert any(path.name == "state.pt" for path in written) and any(path.name == "config.yaml" for path in written)
    assert [path for path in written if PASSWORD.encode() in path.read_bytes()] == []


def test_database_uris_are_masked_in_every_stored_config():
    """A database store's URI (postgresql://user:pw@host/db) can only carry its password inline: what a job
    stores (config.yaml, checkpoints) has it masked."""
    from adadim_dist.config import load_config, storable

    cfg = load_config(None, [f"tracking.uri=postgresql://mlflow:{PASSWORD}@db:5432/mlflow"])
    assert storable(cfg)["tracking"]["uri"] == "postgresql://***@db:5432/mlflow"
    assert PASSWORD not in str(storable(cfg))
