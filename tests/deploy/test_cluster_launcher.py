"""cluster/ray-cluster-gpu.yaml: valid for the installed Ray's cluster launcher (its JSON schema and its own
prepare/validate steps, all offline), and consistent with the image, token auth and shared-storage story."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

from ._deploy import CLUSTER_YAML, load_yaml_documents

SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def raw() -> dict:
    (config,) = load_yaml_documents(CLUSTER_YAML)
    return config


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """What `ray up` builds before it contacts the cloud: provider defaults merged, commands merged, node
    types filled in. Only reads Ray's bundled defaults (no credentials, no network)."""
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    return prepare_config(copy.deepcopy(raw))


def test_matches_rays_cluster_schema(raw):
    """The file as written validates against ray/autoscaler/ray-schema.json of the installed Ray (2.60).
    Catches misspelt or moved keys, which `ray up` would reject only at launch time."""
    jsonschema.validate(raw, json.loads(SCHEMA.read_text()))


def test_passes_rays_own_validation_after_defaults(prepared):
    """`prepare_config` + `validate_config` (what `ray up` runs) accept it: head type exists, min_workers
    fit max_workers, docker settings are consistent."""
    validate_config(prepared)


def test_schema_validation_rejects_a_misspelt_key(raw):
    """The schema is strict enough to matter: a misspelt docker key fails validation."""
    bad = copy.deepcopy(raw)
    bad["docker"]["imagee"] = bad["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads(SCHEMA.read_text()))


def test_head_and_autoscaling_gpu_worker_types(prepared):
    """A head node type and a GPU worker type that scales from zero. Catches a config that pins GPU nodes
    running while idle, or that has no room to scale."""
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    workers = {name: spec for name, spec in node_types.items() if name != prepared["head_node_type"]}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 2
    assert re.match(r"(g|p)\d", worker["node_config"]["InstanceType"]), "worker instance type has no GPU"


def test_nothing_is_installed_over_the_image(prepared):
    """No setup command pip-installs anything: the image is the one source of versions. Catches Ray's AWS
    defaults (which install a Ray wheel) coming back when a setup-command list is removed."""
    commands = prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    assert not [c for c in commands if "pip install" in c]


def test_token_authentication_on_every_node(raw, prepared):
    """Every container runs with RAY_AUTH_MODE=token and the token file is copied to the default token path of
    the image's user on every node. Catches nodes that start without auth or workers that cannot join."""
    options = " ".join(raw["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()
    remote = [path for path in raw["file_mounts"] if path.endswith("/.ray/auth_token")]
    assert remote == ["/home/ray/.ray/auth_token"]
    assert raw["file_mounts"][remote[0]].startswith("~/.ray/")


def test_dashboard_is_not_exposed(raw):
    """The head's dashboard (job submission API) listens on loopback only; users reach it through the SSH
    tunnel of `ray dashboard`. Catches --dashboard-host=0.0.0.0 on a host with a public IP."""
    ray_start = " ".join(c for c in raw["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in ray_start
    assert "0.0.0.0" not in ray_start


def test_tracking_server_on_the_head_with_authentication_and_a_local_store(raw):
    """The head runs MLflow behind basic authentication (the one entry script of every deployment) with its
    SQLite store on the head's local disk, and every node's Ray processes get its address and credentials
    from the mounted env file. Catches a SQLite store on EFS (NFS) or an open tracking server."""
    (server,) = [c for c in raw["head_start_ray_commands"] if "mlflow-server.sh" in c]
    assert "--backend-store-uri sqlite:////mnt/local/" in server and ". ~/.ray/mlflow.env" in server
    assert raw["file_mounts"]["/home/ray/.ray/mlflow.env"].startswith("~/.ray/")
    for commands, address in ((raw["head_start_ray_commands"], "127.0.0.1"),
                              (raw["worker_start_ray_commands"], "$RAY_HEAD_IP")):
        (start,) = [c for c in commands if "ray start" in c]
        assert f"MLFLOW_TRACKING_URI=http://{address}:5000" in start and "MLFLOW_TRACKING_PASSWORD=$" in start


def test_shared_storage_mounted_into_every_container(raw):
    """EFS is mounted on each host at /mnt/shared by initialization_commands and bind-mounted into the
    container at the same path, with node-local /mnt/local for data.cache_dir; the container's setup checks
    both are writable. Catches checkpoints written to a node's own disk (lost when it scales down)."""
    init = " ".join(raw["initialization_commands"])
    assert re.search(r"mount -t nfs4 .*:/ /mnt/shared", init)
    options = raw["docker"]["run_options"]
    assert "--volume /mnt/shared:/mnt/shared" in options
    assert "--volume /mnt/local:/mnt/local" in options
    assert any("test -w /mnt/shared/runs" in c for c in raw["setup_commands"])
