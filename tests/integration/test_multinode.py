"""The smoke job on a Ray cluster of two nodes simulated on this machine (`ray.cluster_utils.Cluster`): one
worker per node (STRICT_SPREAD), the .beton read through the node-local cache path (`data.cache_dir`)."""

from __future__ import annotations

import re

import pytest

from ..conftest import REPO, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_node_cluster_with_node_local_cache(tiny_betons, tmp_path, ray_cluster):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        cache = tmp_path / "node-local-cache"
        out = run_cli([
            "--config", "configs/fmnist_smoke.yaml", f"data.train_path={tiny_betons['train']}",
            f"data.test_path={tiny_betons['test']}", f"data.cache_dir={cache}", f"run.storage_path={tmp_path}",
            "run.name=two-nodes", "training.epochs=1", "training.global_batch_size=64",
            "training.max_steps_per_epoch=3", "training.log_every=3", "training.cpus_per_worker=0.5",
            "training.placement_strategy=STRICT_SPREAD", "eval.baselines=false", "eval.knn_k=[20]",
        ], cwd=REPO, env={"RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "token"})
    finally:
        cluster.shutdown()
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-4000:]
    node_ranks = set(re.findall(r"world_rank=\d+, local_rank=\d+, node_rank=(\d+)", output))
    assert node_ranks == {"0", "1"}, output[-3000:]
    cached = sorted(p.name for p in cache.rglob("*.beton"))
    assert any("train" in name for name in cached) and any("test" in name for name in cached), cached
