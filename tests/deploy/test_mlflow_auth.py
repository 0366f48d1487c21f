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

    with pytest.raises(TrackingUnavailableError, match="^tracking.uri: cannot use MLflow at http://127.0.0.1"):
        open_tracking(resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=refused"])))


def test_credentials_in_a_tracking_uri_are_masked_in_params_and_messages(auth_server, tmp_path, monkeypatch):
    from adadim_dist.config import load_config
    from adadim_dist.training.driver import TrackingUnavailableError, open_tracking, resolve_paths

    host = auth_server["uri"].removeprefix("http://")
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=inline",
                                           f"tracking.uri=http://{ADMIN}:{PASSWORD}@{host}"]))
    with pytest.raises(TrackingUnavailableError) as raised:
        open_tracking(cfg)  # MLflow does not take credentials from the URI; the message must not show them
    assert PASSWORD not in str(raised.value) and f"http://***@{host}" in str(raised.value)
