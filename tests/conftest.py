"""Shared fixtures: tiny real .beton files written once per test session from the installed Fashion-MNIST."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import adadim_dist.data._ffcv  # noqa: F401  (FFCV's fast import, before a test module imports ffcv)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_betons(tmp_path_factory) -> dict[str, Path]:
    """1,024 training and 512 test images of Fashion-MNIST as RGB 32×32 (real files, real FFCV format)."""
    from adadim_dist.data.sources import read_source
    from adadim_dist.data.writer import write_beton

    root = tmp_path_factory.mktemp("betons")
    paths = {"train": root / "fmnist_train.beton", "test": root / "fmnist_test.beton"}
    write_beton(read_source("fashion_mnist", "train"), paths["train"], as_rgb32=True, limit=1024, progress=False)
    write_beton(read_source("fashion_mnist", "test"), paths["test"], as_rgb32=True, limit=512, progress=False)
    return paths


def run_cli(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m adadim_dist.run ...`` in a subprocess, output captured (printed on failure by callers)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adadim_dist.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


from .distributed._harness import free_port  # noqa: E402  (one definition for every test)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real head node (``ray start --head``: dashboard on loopback, token authentication at its default,
    on) shared by the integration tests, which saves a Ray start-up per training run. Yields the environment
    a client needs to reach it, and the dashboard's address. Stopped by killing its own processes (those of its
    temp dir), not with ``ray stop``, which would also stop every other Ray instance on the machine."""
    ray = str(Path(sys.executable).parent / "ray")
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="adadim_ray_", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                       check=True, cwd=REPO, env=env, capture_output=True, timeout=180)
        yield {"env": {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"},
               "dashboard": f"http://127.0.0.1:{dashboard_port}", "dashboard_port": dashboard_port}
    finally:
        stop_ray_instance(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)  # the session's logs and sockets (~10 MB a session)


def stop_ray_instance(temp_dir: str, port: int) -> None:
    """SIGKILL the Ray processes of the head started with ``--temp-dir=temp_dir --port=port`` (each names the
    directory or the head's address on its command line) and their descendants (workers), leaving any other
    Ray instance on the machine alone."""
    import psutil

    def is_own(cmdline: list[str]) -> bool:
        return any(temp_dir in part or part.endswith(f":{port}") for part in cmdline)

    own = [p for p in psutil.process_iter(["cmdline"]) if is_own(p.info["cmdline"] or [])]
    for process in own:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.kill()
    psutil.wait_procs(own, timeout=30)


def stop_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL a ``start_new_session`` process, its group and every descendant (Ray's workers need not share
    the group), and reap it."""
    import psutil

    if process.poll() is None:
        descendants = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    process.wait(timeout=30)


@pytest.fixture()
def two_node_cluster(tmp_path):
    """A head and a second raylet on this machine, started with `ray start` (1 CPU each). Yields the client
    environment and a function that kills the second node (its processes and all their descendants)."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    nodes = []

    def start(args, log_name):
        log = (tmp_path / log_name).open("w")
        nodes.append(subprocess.Popen([ray, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 120
        while "Ray runtime started" not in (tmp_path / log_name).read_text():
            assert nodes[-1].poll() is None and time.time() < deadline, (tmp_path / log_name).read_text()
            time.sleep(0.5)

    temp_dir = tempfile.mkdtemp(prefix="adadim_2n_", dir="/tmp")  # short: Ray's socket paths have a limit
    try:
        start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}"], "head.log")
        start([f"--address=127.0.0.1:{port}"], "node.log")

        def kill_second_node():
            """Everything the second `ray start` runs dies at once, as on a lost machine: its process group and
            every descendant (the raylet's workers need not share its group)."""
            stop_process_tree(nodes[1])

        yield {"env": {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"}, "kill_second_node": kill_second_node}
    finally:
        for node in reversed(nodes):
            stop_process_tree(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def record_fault(fault: str, **observed) -> None:
    """Append what a fault-injection test observed to $ADADIM_FAULT_LOG (JSON lines), for RELIABILITY.md."""
    path = os.environ.get("ADADIM_FAULT_LOG")
    if path:
        import json

        with open(path, "a") as handle:
            handle.write(json.dumps({"fault": fault, **observed}) + "\n")


def steps_done_before(text: str, epoch: int) -> int:
    """The last step of ``epoch`` a log shows: the work a fault in that epoch throws away."""
    import re

    steps = [int(s) for s in re.findall(rf"epoch {epoch} step (\d+)/", text)]
    return max(steps, default=0)


class S3Server:
    """A running S3-compatible server on 127.0.0.1 (moto's, in its own process): buckets made with boto3,
    pyarrow URIs that carry the endpoint and the credentials (as user info, which every stored copy masks)."""

    ACCESS_KEY, SECRET_KEY = "adadim-test-key", "adadim-s3-secret-5f1c9"

    def __init__(self, port: int) -> None:
        self.endpoint = f"127.0.0.1:{port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1")

    def bucket(self) -> str:
        """A new, empty bucket's name."""
        import uuid

        name = f"adadim-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def uri(self, bucket: str, prefix: str = "") -> str:
        return (f"s3://{self.ACCESS_KEY}:{self.SECRET_KEY}@{bucket}{'/' + prefix if prefix else ''}"
                f"?endpoint_override={self.endpoint}&scheme=http&region=us-east-1")

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in ``bucket``: key -> content."""
        client = self.client()
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for item in page.get("Contents", [])]
        return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (``moto_server``, a real HTTP server in a subprocess) on a free loopback port."""
    import urllib.error
    import urllib.request

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                assert server.poll() is None and time.time() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield S3Server(port)
    finally:
        stop_process_tree(server)
