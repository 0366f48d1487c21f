"""docker/compose.yaml (+ compose.gpu.yaml): the local stack publishes only on loopback, holds no credential,
keeps Ray token authentication on, pins its images, and wires MLflow and the shared volumes as documented."""

from __future__ import annotations

import re

import pytest

from ._deploy import (
    COMPOSE,
    COMPOSE_GPU,
    REQUIRED_VAR,
    command_words,
    compose_env,
    literal_secrets,
    load_yaml_documents,
    non_loopback_ports,
)

RAY_NODES = ("ray-head", "ray-worker")


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    (compose,) = load_yaml_documents(COMPOSE)
    return compose["services"]


def test_expected_services(services):
    """Ray head, one Ray worker, MLflow and its PostgreSQL database. Catches a renamed or dropped service
    that the README's commands (`docker compose ... ray-head`) and the Ray worker's address depend on."""
    assert set(services) == {"ray-head", "ray-worker", "mlflow", "postgres"}
    assert "--address=ray-head:6379" in command_words(services["ray-worker"])


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_published_ports_bind_to_loopback_only(path):
    """Every published port is bound to 127.0.0.1 on the host. Catches `8265:8265`, which would expose the
    Ray job API (remote code execution for anyone holding the token) and MLflow on every interface."""
    (compose,) = load_yaml_documents(path)
    assert non_loopback_ports(compose["services"]) == []


def test_dashboard_and_mlflow_are_published(services):
    """The two user-facing ports are there (loopback): the Ray dashboard / job API and the MLflow UI."""
    assert "127.0.0.1:8265:8265" in services["ray-head"]["ports"]
    assert "127.0.0.1:5000:5000" in services["mlflow"]["ports"]


def test_no_literal_credentials(services):
    """Passwords and tokens come from docker/.env as `${VAR:?...}` (compose stops when one is missing), never
    written in the file, also not inside a database URI. Catches a committed password."""
    assert literal_secrets(services) == []


def test_literal_credential_checker_flags_literals():
    """The checker itself: a literal password, a literal token, a `${VAR:-default}` fallback (a default is a
    literal credential) and a password inside a URI are all reported."""
    bad = {
        "db": {"environment": {"POSTGRES_PASSWORD": "hunter2", "RAY_AUTH_TOKEN": "${RAY_AUTH_TOKEN:-abc}"}},
        "app": {"environment": ["MLFLOW_BACKEND_STORE_URI=postgresql://u:hunter2@db/x"]},
        "cmd": {"command": "mlflow server --backend-store-uri postgresql://u:pw@db/x"},
    }
    assert len(literal_secrets(bad)) == 4
    good = {"db": {"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it}"}}}
    assert literal_secrets(good) == []


def test_ray_token_authentication_stays_on(services):
    """Both Ray nodes run with RAY_AUTH_MODE=token and the token from the environment. Catches a node started
    without auth (Ray would then accept unauthenticated jobs) or a head and worker with different tokens."""
    for name in RAY_NODES:
        env = compose_env(services[name])
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert REQUIRED_VAR.fullmatch(env.get("RAY_AUTH_TOKEN", "")), name
    tokens = {compose_env(services[name])["RAY_AUTH_TOKEN"] for name in RAY_NODES}
    assert len(tokens) == 1


def test_images_are_pinned_by_tag(services):
    """Every image has an explicit tag other than `latest` (the project image through its default)."""
    for name, service in services.items():
        image = service["image"]
        default = re.fullmatch(r"\$\{\w+:-([^}]+)\}", image)
        image = default.group(1) if default else image
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"


def test_mlflow_server_uses_database_and_proxied_artifact_volume(services):
    """MLflow keeps runs in PostgreSQL and serves artifacts itself from a named volume
    (--serve-artifacts --artifacts-destination). Catches a file/sqlite store inside the container (lost on
    re-creation) or artifacts written to paths only one container can see."""
    mlflow = services["mlflow"]
    words = command_words(mlflow)
    assert words[:2] == ["sh", "/app/docker/mlflow-server.sh"]  # `mlflow server --app-name basic-auth`
    assert "--serve-artifacts" in words
    destination = words[words.index("--artifacts-destination") + 1]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in mlflow["volumes"]}
    assert destination in mounts, "the artifact destination is not on a volume"
    assert compose_env(mlflow)["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--backend-store-uri" not in words, "the database URI (with its password) belongs in the environment"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_mlflow_accepts_the_host_names_clients_use(services):
    """The Ray nodes reach MLflow as http://mlflow:5000 and the browser as 127.0.0.1:5000; MLflow's host-header
    check must allow both. Catches every tracking call failing with `Invalid Host header`."""
    words = command_words(services["mlflow"])
    allowed = words[words.index("--allowed-hosts") + 1].split(",")
    for host in ("mlflow:5000", "127.0.0.1:*", "localhost:*"):
        assert host in allowed, host
    for name in RAY_NODES:
        assert compose_env(services[name])["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_ray_nodes_share_data_and_checkpoint_volumes(services):
    """Head and worker mount the same named volumes at the same paths for datasets and checkpoints, so a
    checkpoint written by a worker on one node is restored on another. Catches per-node paths."""
    mounts = [sorted(services[name]["volumes"]) for name in RAY_NODES]
    assert mounts[0] == mounts[1]
    targets = {volume.split(":")[1] for volume in mounts[0]}
    assert {"/mnt/shared/data", "/mnt/shared/runs"} <= targets


def test_gpu_override_reserves_nvidia_devices():
    """compose.gpu.yaml gives NVIDIA GPUs to the Ray worker only (two nodes on one host sharing all GPUs would
    both advertise them to Ray)."""
    (gpu,) = load_yaml_documents(COMPOSE_GPU)
    assert set(gpu["services"]) == {"ray-worker"}
    devices = gpu["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_mlflow_asks_for_authentication_and_the_ray_nodes_log_in(services):
    """The tracking server runs MLflow's basic-auth app with the admin account and CSRF key from docker/.env,
    keeps its users on a volume, and the Ray nodes (the job driver and rank 0) get the same account as
    MLFLOW_TRACKING_USERNAME / _PASSWORD. Catches an open server or nodes that cannot log in."""
    env = compose_env(services["mlflow"])
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key].startswith("${") and ":?" in env[key], key
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services["mlflow"]["volumes"]}
    assert env["MLFLOW_AUTH_DIR"] in mounts
    for name in ("ray-head", "ray-worker"):
        node = compose_env(services[name])
        assert node["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert node["MLFLOW_TRACKING_USERNAME"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert node["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
