"""The smoke job on a Ray cluster of two nodes on this machine (a head and a second raylet, both started with
`ray start`): one worker per node (STRICT_SPREAD), the .beton read through the node-local cache path
(`data.cache_dir`). (`ray.cluster_utils.Cluster` was the first choice, but in Ray 2.60 an external driver's
actors on its nodes are cancelled before they start, so the nodes are started the way users start them.)"""

from __future__ import annotations

import re

import pytest

from ..conftest import REPO, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_node_cluster_with_node_local_cache(tiny_betons, tmp_path, two_node_cluster):
    cache = tmp_path / "node-local-cache"
    out = run_cli([
        "--config", "configs/fmnist_smoke.yaml", f"data.train_path={tiny_betons['train']}",
        f"data.test_path={tiny_betons['test']}", f"data.cache_dir={cache}", f"run.storage_path={tmp_path}",
        "run.name=two-nodes", "training.epochs=1", "training.global_batch_size=64",
        "training.max_steps_per_epoch=3", "training.log_every=3", "training.cpus_per_worker=0.5",
        "training.placement_strategy=STRICT_SPREAD", "eval.baselines=false", "eval.knn_k=[20]",
    ], cwd=REPO, env=two_node_cluster["env"])
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-4000:]
    placement = dict(re.findall(r"worker rank (\d)/2 on node (\w+)", output))
    assert set(placement) == {"0", "1"} and len(set(placement.values())) == 2, output[-3000:]
    cached = sorted(p.name for p in cache.rglob("*.beton"))
    assert any("train" in name for name in cached) and any("test" in name for name in cached), cached
