"""The smoke job on a Ray cluster of two nodes on this machine (a head and a second raylet, both started with
`ray start`): one worker per node (STRICT_SPREAD), the .beton read through the node-local cache path
(`data.cache_dir`). (`ray.cluster_utils.Cluster` was the first choice, but in Ray 2.60 an external driver's
actors on its nodes are cancelled before they start, so the nodes are started the way users start them.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..conftest import REPO, free_port, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def two_node_cluster(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    nodes = []

    def start(args, log_name):
        log = (tmp_path / log_name).open("w")
        nodes.append(subprocess.Popen([RAY, "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 120
        while "Ray runtime started" not in (tmp_path / log_name).read_text():
            assert nodes[-1].poll() is None and time.time() < deadline, (tmp_path / log_name).read_text()
            time.sleep(0.5)

    try:
        start(["--head", f"--port={port}", "--include-dashboard=false",
               f"--temp-dir={tempfile.mkdtemp(prefix='adadim_2n_', dir='/tmp')}"], "head.log")
        start([f"--address=127.0.0.1:{port}"], "node.log")
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"}
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)


def test_two_node_cluster_with_node_local_cache(tiny_betons, tmp_path, two_node_cluster):
    cache = tmp_path / "node-local-cache"
    out = run_cli([
        "--config", "configs/fmnist_smoke.yaml", f"data.train_path={tiny_betons['train']}",
        f"data.test_path={tiny_betons['test']}", f"data.cache_dir={cache}", f"run.storage_path={tmp_path}",
        "run.name=two-nodes", "training.epochs=1", "training.global_batch_size=64",
        "training.max_steps_per_epoch=3", "training.log_every=3", "training.cpus_per_worker=0.5",
        "training.placement_strategy=STRICT_SPREAD", "eval.baselines=false", "eval.knn_k=[20]",
    ], cwd=REPO, env=two_node_cluster)
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-4000:]
    placement = dict(re.findall(r"worker rank (\d)/2 on node (\w+)", output))
    assert set(placement) == {"0", "1"} and len(set(placement.values())) == 2, output[-3000:]
    cached = sorted(p.name for p in cache.rglob("*.beton"))
    assert any("train" in name for name in cached) and any("test" in name for name in cached), cached
