"""Fault injection and bad input on the real stack. Each test says what a user would otherwise lose.

The killed-driver and non-finite-loss cases follow one job in tests/integration/test_run.py; the token and
loopback checks are in tests/integration/test_job_submit.py."""

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

from ..conftest import REPO, free_port, record_fault, steps_done_before

pytestmark = [pytest.mark.reliability]


def args_for(betons, storage, name, *extra):
    return [
        "--config", "configs/fmnist_smoke.yaml",
        f"data.train_path={betons['train']}", f"data.test_path={betons['test']}",
        f"run.storage_path={storage}", f"run.name={name}", "training.global_batch_size=64",
        "training.log_every=2", "training.layout=as_given", "training.cpus_per_worker=0.5",  # 2 DDP workers
        "data.num_loader_workers=1", "eval.baselines=false", "eval.knn_k=[20]",
        "eval.every_epochs=1", "run.verbose=true", *extra,  # the tests read the workers' step lines
    ]


def run_main(args, capsys) -> tuple[int, str]:
    """The entry point in this process (the failure paths end before any subprocess or Ray start)."""
    from adadim_dist.run import main

    code = main(args)
    return code, capsys.readouterr().err


def final_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith('{"run_id"')][-1])


def fingerprint_of(model_state: dict) -> str:
    total = sum(v.double().sum().item() for v in model_state.values() if v.is_floating_point())
    return f"{total:.12e}"


# ---------------------------------------------------------------------------------------------- bad data
def _bad_betons(tiny_betons, tmp_path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.beton"
    data = tiny_betons["train"].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.beton"
    garbage.write_bytes(b"not a beton file at all" * 100)
    from adadim_dist.data.sources import ImageSet
    from adadim_dist.data.writer import write_beton
    import numpy as np

    unlabeled = tmp_path / "unlabeled.beton"
    images = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    write_beton(ImageSet(name="nolabels", images=images, labels=None), unlabeled, progress=False)
    return {"truncated": truncated, "garbage": garbage, "unlabeled": unlabeled, "missing": tmp_path / "nope.beton"}


@pytest.mark.parametrize("case, message", [
    ("truncated", r"truncated|corrupt|shorter"),
    ("garbage", r"corrupt|not an? (FFCV|\.beton)|header|version"),
    ("missing", r"no such \.beton file"),
    ("unlabeled", r"label"),
])
def test_bad_dataset_files_fail_in_one_line_without_a_run(tiny_betons, tmp_path, case, message, capsys):
    """A truncated, corrupt, missing or label-less .beton stops the job before Ray or MLflow start:
    one line, exit code 2, no MLflow run left behind (RUNNING or otherwise)."""
    bad = _bad_betons(tiny_betons, tmp_path)[case]
    storage = tmp_path / "runs"
    betons = {"train": tiny_betons["train"], "test": bad} if case == "unlabeled" else {"train": bad,
                                                                                        "test": tiny_betons["test"]}
    # A missing file of a built-in source is written on demand; for other sources it is an error.
    extra = ["data.source=cifar10"] if case == "missing" else []
    code, stderr = run_main(args_for(betons, storage, "bad", *extra), capsys)
    assert code == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adadim_dist: error: "), stderr
    assert re.search(message, lines[0], re.I), lines[0]
    assert not (storage / "mlflow.db").exists()


def test_batch_larger_than_each_workers_share_fails_before_start(tiny_betons, tmp_path, capsys):
    code, stderr = run_main(args_for(tiny_betons, tmp_path, "big", "training.global_batch_size=2048"), capsys)
    assert code == 2
    assert re.match(r"adadim_dist: error: training.global_batch_size: 2048 needs 1024 images per worker, but 1024 "
                    r"training images give each of 2 workers 512", stderr.strip())
    assert not (tmp_path / "mlflow.db").exists()


def test_empty_subset_is_a_config_error(tiny_betons, tmp_path, capsys):
    code, stderr = run_main(args_for(tiny_betons, tmp_path, "empty", "data.subset=0"), capsys)
    assert code == 2 and stderr.startswith("adadim_dist: error: data.subset:")


# ---------------------------------------------------------------------------------------------- tracking
def test_unreachable_tracking_server_at_start_fails_fast(tiny_betons, tmp_path, capsys):
    started = time.time()
    code, stderr = run_main(args_for(tiny_betons, tmp_path, "down", f"tracking.uri=http://127.0.0.1:{free_port()}"),
                            capsys)
    assert code == 2
    assert re.match(r"adadim_dist: error: tracking.uri: cannot reach MLflow at http://127.0.0.1:\d+", stderr.strip())
    assert time.time() - started < 30  # not MLflow's minutes of retries


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback that a test can stop and start again on the same port."""
    tmp_path = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    db = tmp_path / "server.db"
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{db}", "--default-artifact-root", (tmp_path / "art").as_uri(),
               "--workers", "1"]
    state = {}

    def start():
        state["process"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        import urllib.request

        deadline = time.time() + 180  # a busy 2-core machine can take a minute or more
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(abrupt: bool = False):
        if abrupt:  # a crash, not a shutdown: no draining of the clients' open connections
            os.killpg(state["process"].pid, signal.SIGKILL)
            state["process"].wait(timeout=30)
            return
        os.killpg(state["process"].pid, signal.SIGTERM)
        try:
            state["process"].wait(timeout=15)
        except subprocess.TimeoutExpired:  # uvicorn drains open connections first; an outage does not wait
            os.killpg(state["process"].pid, signal.SIGKILL)
            state["process"].wait(timeout=30)

    start()
    yield {"uri": f"http://127.0.0.1:{port}", "start": start, "stop": stop}
    if state["process"].poll() is None:
        stop()


def test_metrics_logged_during_an_outage_are_buffered_and_sent_when_it_returns(mlflow_server, tmp_path,
                                                                                monkeypatch):
    """Rank 0's sink keeps training going while the server is down and loses no metric value."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    from adadim_dist.training.tracking import MLflowSink

    sink = MLflowSink(mlflow_server["uri"], "outage", "run", tmp_path)
    sink.log({"loss/total": 1.0}, step=1)
    assert sink.flush()
    mlflow_server["stop"]()
    started = time.time()
    sink.log({"loss/total": 2.0}, step=2)
    sink.log({"loss/total": 3.0}, step=3)
    assert time.time() - started < 0.5  # queued: the background sender meets the outage, not the step
    assert not sink.flush(timeout_s=30) and len(sink._pending) == 2
    mlflow_server["start"]()
    sink.log({"loss/total": 4.0}, step=4)
    sink.close()
    history = sink.client.get_metric_history(sink.run_id, "loss/total")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_metrics_still_unsent_at_the_end_are_written_locally_and_replayable(mlflow_server, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    from adadim_dist.training.tracking import MLflowSink, replay

    sink = MLflowSink(mlflow_server["uri"], "outage", "run", tmp_path)
    mlflow_server["stop"]()
    sink.log({"a": 1.0, "b": 2.0}, step=7)
    spilled = tmp_path / "unsent.jsonl"
    assert sink.spill(spilled) == 2 and len(spilled.read_text().splitlines()) == 2
    mlflow_server["start"]()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # the outage is over: a busy machine may be slow
    assert replay(spilled, mlflow_server["uri"]) == 2
    assert sink.client.get_run(sink.run_id).data.metrics == {"a": 1.0, "b": 2.0}


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_write_interrupted_leaves_previous_file_usable(tmp_path, monkeypatch):
    from adadim_dist.training import checkpoint

    checkpoint.save_state(tmp_path, {"epoch": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_state(tmp_path, {"epoch": 2})
    assert checkpoint.load_state(tmp_path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    """weights_only=True: a checkpoint carrying an arbitrary object is refused, not executed."""
    from adadim_dist.training import checkpoint

    torch.save({"epoch": 1, "payload": _Evil()}, tmp_path / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"state\.pt holds objects other than tensors and plain "
                                                          r"data: refused \(checkpoints are loaded with weights_only"):
        checkpoint.load_state(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_resuming_with_an_incompatible_config_is_refused_before_start(tiny_betons, tmp_path, capsys):
    """The run directory holds the config the checkpoints were written with; changing the architecture
    and re-running the same run name stops with one line instead of a shape error deep in a worker."""
    from adadim_dist.config import load_config
    import yaml

    run_dir = tmp_path / "incompatible"
    run_dir.mkdir()
    previous = load_config("configs/fmnist_smoke.yaml", ["model.backbone=resnet18"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(previous.model_dump(mode="json")))
    code, stderr = run_main(args_for(tiny_betons, tmp_path, "incompatible"), capsys)
    assert code == 2
    assert stderr.startswith("adadim_dist: error: checkpoint: incompatible with this config: model was")
    assert "use --fresh" in stderr


@pytest.mark.integration
@pytest.mark.slow
def test_two_node_job_reads_node_local_cache_and_survives_losing_a_node(tiny_betons, tmp_path, two_node_cluster):
    """The smoke job on a Ray cluster of two nodes on this machine (a head and a second raylet, both started with
    `ray start`; `ray.cluster_utils.Cluster` was the first choice, but in Ray 2.60 an external driver's actors on
    its nodes are cancelled before they start). Its workers run one per node (SPREAD) and read the .beton files
    through the node-local cache path (`data.cache_dir`). Then one node dies during epoch 2 (its raylet and the
    worker on it killed): with max_failures=1 the job restarts both workers on the remaining node from the
    epoch-1 checkpoint and finishes."""
    log = tmp_path / "run.log"
    cache = tmp_path / "node-local-cache"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "adadim_dist.run",
             *args_for(tiny_betons, tmp_path, "node-lost", "training.epochs=2", "training.placement_strategy=SPREAD",
                       "run.max_failures=1", f"data.cache_dir={cache}")],  # 16 steps per epoch
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **two_node_cluster["env"]})
    deadline = time.time() + 480
    while not re.search(r"epoch 2 step 2/", log.read_text()):
        assert process.poll() is None and time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    before_fault = log.read_text()
    placement = dict(re.findall(r"worker rank (\d)/2 on node (\w+)", before_fault))
    assert set(placement) == {"0", "1"} and len(set(placement.values())) == 2, before_fault[-3000:]
    cached = sorted(p.name for p in cache.rglob("*.beton"))
    assert any("train" in name for name in cached) and any("test" in name for name in cached), cached
    lost_steps = steps_done_before(before_fault, 2)
    two_node_cluster["kill_second_node"]()
    killed_at = time.time()
    assert process.wait(timeout=600) == 0, log.read_text()[-5000:]
    text = log.read_text()
    record_fault("node lost mid-epoch 2 (1 of 2)", seconds_to_finish=round(time.time() - killed_at),
                 steps_lost=lost_steps, recovered=True)
    summary = final_json(text)
    assert summary["epochs"] == 2 and summary["resumed_from_epoch"] == 1
    assert (tmp_path / "node-lost" / "epoch_0002" / "model.pt").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_tracking_down_until_the_end_and_a_worker_restarted_during_the_outage(mlflow_server, tiny_betons, tmp_path):
    """The server named by MLFLOW_TRACKING_URI (as docker/compose.yaml sets it) stops after epoch 1 and stays
    down; during the outage rank 0 is killed (SIGKILL, local Ray started by the entry point) and the worker group
    restarts from the epoch-1 checkpoint, with parameters equal to the checkpoint's. The job still finishes
    (exit 0) and prints its summary; every value it could not send, and the run's final status, wait in
    unsent_metrics.jsonl, and ``replay`` delivers them once the server is back, one value per epoch."""
    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import replay

    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=mlflow_server["uri"])
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "adadim_dist.run",
             # Epochs 3-5 only leave time for the kill to land mid-training: on an idle machine an epoch of
             # this tiny job takes about a second, less than Ray takes to forward a worker's log line.
             *args_for(tiny_betons, tmp_path, "outage", "training.epochs=5", "training.max_steps_per_epoch=8",
                       "run.max_failures=1")],
            cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait_for(pattern: str) -> re.Match:
        deadline = time.time() + 480
        while not (found := re.search(pattern, log.read_text())):
            assert process.poll() is None and time.time() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        return found

    try:
        wait_for(r"epoch 1/5 done")
        mlflow_server["stop"](abrupt=True)  # at once: a graceful stop waits for the job's open connections
        rank0 = wait_for(r"RayTrainWorker pid=(\d+)\)[^\n]*epoch 2 step 2/")
        lost_steps = steps_done_before(log.read_text(), 2)
        # Read now: by the end of epoch 3 the job has deleted this checkpoint (run.checkpoints_to_keep=2).
        epoch1 = fingerprint_of(torch.load(tmp_path / "outage" / "epoch_0001" / "model.pt", weights_only=True))
        os.kill(int(rank0.group(1)), signal.SIGKILL)
        killed_at = time.time()
        assert process.wait(timeout=600) == 0, log.read_text()[-5000:]
        seconds_to_finish = round(time.time() - killed_at)
    finally:
        if process.poll() is None:
            process.kill()
        mlflow_server["start"]()
    text = log.read_text()
    summary = final_json(text)
    assert summary["epochs"] == 5 and summary["resumed_from_epoch"] == 1
    # The restarted worker group starts from exactly the epoch-1 checkpoint's parameters.
    resumed = re.search(r"resumed from checkpoint after epoch 1 .*parameter fingerprint ([-+.\de]+)", text)
    assert resumed and resumed.group(1) == epoch1, text[-4000:]
    assert summary["knn_top1"] is not None and "MLflow unreachable at the end" in summary["tracking"]
    assert summary["tracking_uri"] == mlflow_server["uri"]  # the environment variable, not the local SQLite file
    assert not (tmp_path / "mlflow.db").exists()
    unsent = tmp_path / "outage" / "unsent_metrics.jsonl"
    rows = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert [row["status"] for row in rows if "status" in row] == ["FINISHED"]
    # Epochs 2-5 were logged during the outage; epoch 1's values were queued just before it began, so they may
    # have been sent or may wait here too (the sender is asynchronous). Either way, each exactly once (below).
    assert {row["step"] for row in rows if row.get("key") == "knn/top1_k20"} - {1} == {2, 3, 4, 5}

    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    assert client.get_run(summary["run_id"]).info.status == "RUNNING"  # what the outage left behind
    assert replay(unsent, mlflow_server["uri"]) == sum("key" in row for row in rows)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "knn/top1_k20")) == [1, 2, 3, 4, 5]
    assert run.data.metrics["knn/top1_k20"] == pytest.approx(summary["knn_top1"])
    record_fault("MLflow down from epoch 2 to the end, rank 0 killed in the outage", recovered=True,
                 seconds_to_finish=seconds_to_finish, steps_lost=lost_steps,
                 unsent_values=sum("key" in row for row in rows))
