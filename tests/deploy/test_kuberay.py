"""cluster/kuberay/: RayCluster, RayJob, MLflow and storage manifests are structurally right and agree with
each other, with the cluster-launcher YAML, with constraints.txt and with the project's own config."""

from __future__ import annotations

import re
import shlex

import pytest

from adadim_dist.config import load_config

from ._deploy import (
    CLUSTER_YAML,
    CONFIGS,
    CONSTRAINTS,
    KUBERAY,
    REPO,
    SECRET_NAME,
    documents_of_kind,
    kuberay_documents,
    load_yaml_documents,
    read_pins,
)

SHARED_CLAIM = "adadim-shared"
SHARED_PATH = "/mnt/shared"
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


def ray_cluster_specs() -> dict[str, dict]:
    """The RayCluster spec and the RayJob's embedded rayClusterSpec, by owner name."""
    specs = {doc["metadata"]["name"]: doc["spec"] for doc in documents_of_kind("RayCluster")}
    specs.update({doc["metadata"]["name"]: doc["spec"]["rayClusterSpec"] for doc in documents_of_kind("RayJob")})
    return specs


def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def containers(pod: dict) -> list[dict]:
    return pod["spec"]["containers"]


def launcher_image() -> str:
    (config,) = load_yaml_documents(CLUSTER_YAML)
    return config["docker"]["image"]


def rayjob_config():
    """The RayJob's entrypoint parsed as the CLI would: `python -m adadim_dist.run --config FILE k=v ...`,
    validated by the project's own loader against the repository's configs/."""
    (job,) = documents_of_kind("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "adadim_dist.run"], argv
    rest = argv[3:]
    config_path = None
    if "--config" in rest:
        i = rest.index("--config")
        config_path = rest[i + 1]
        rest = rest[:i] + rest[i + 2:]
    return config_path, rest


def test_every_manifest_has_known_api_version_and_kind():
    """apiVersion/kind pairs are the ones the cluster serves (ray.io/v1 for KubeRay ≥ 1.0). Catches the
    deprecated ray.io/v1alpha1 or a typo that `kubectl apply` would reject."""
    docs = kuberay_documents()
    assert {doc["kind"] for _, doc in docs} >= {"RayCluster", "RayJob", "Deployment", "Service",
                                               "PersistentVolumeClaim"}
    for path, doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], f"{path.name}: {doc['kind']}"
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], path.name


def test_kustomization_lists_existing_files():
    """kubectl apply -k applies files that exist, and not the RayJob (it would start a second cluster)."""
    (kustomization,) = documents_of_kind("Kustomization")
    for resource in kustomization["resources"]:
        assert (KUBERAY / resource).is_file(), resource
    assert "rayjob.yaml" not in kustomization["resources"]


def test_images_match_the_cluster_launcher_image():
    """Every container (Ray head, workers, MLflow) runs the same image as cluster/ray-cluster-gpu.yaml.
    Catches a release that updates one deployment path and leaves the other on an old image."""
    image = launcher_image()
    seen = []
    for spec in ray_cluster_specs().values():
        seen += [c["image"] for pod in pod_templates(spec) for c in containers(pod)]
    for deployment in documents_of_kind("Deployment"):
        seen += [c["image"] for c in containers(deployment["spec"]["template"])]
    assert seen and set(seen) == {image}


def test_image_tag_is_the_project_version():
    """The image tag used everywhere equals pyproject's version, so a deployment names the code it runs.
    Catches a version bump without a new image tag (or the reverse)."""
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert launcher_image().rsplit(":", 1)[1] == version
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert f"adadim-dist:{version}" in compose


def test_ray_version_matches_constraints():
    """rayVersion (used by KubeRay to pick features such as token auth) equals the ray pin of
    constraints.txt, which the image installs."""
    ray_pin = read_pins(CONSTRAINTS)["ray"]
    for name, spec in ray_cluster_specs().items():
        assert spec["rayVersion"] == ray_pin, name


def test_token_authentication_enabled():
    """Both Ray clusters use KubeRay's token auth (authOptions.mode=token; KubeRay generates the Secret and
    sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every container and the job submitter), and no container turns it
    off. Catches a cluster whose job API accepts anyone who can reach it."""
    for name, spec in ray_cluster_specs().items():
        assert spec["authOptions"]["mode"] == "token", name
        for pod in pod_templates(spec):
            for container in containers(pod):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("RAY_AUTH_MODE") in (None, "token"), name


def test_gpu_workers_request_gpus():
    """Every worker group requests and limits `nvidia.com/gpu` (equal, as the device plugin requires), and
    the head requests none. Catches GPU pods scheduled on CPU nodes or Ray seeing no GPU."""
    for name, spec in ray_cluster_specs().items():
        head = containers(spec["headGroupSpec"]["template"])[0]["resources"]
        assert "nvidia.com/gpu" not in head.get("limits", {}), name
        for group in spec["workerGroupSpecs"]:
            resources = containers(group["template"])[0]["resources"]
            gpus = int(resources["limits"]["nvidia.com/gpu"])
            assert gpus >= 1 and int(resources["requests"]["nvidia.com/gpu"]) == gpus, group["groupName"]


def test_shared_claim_mounted_at_the_same_path_on_every_pod():
    """Every Ray pod (head and workers, RayCluster and RayJob) mounts the adadim-shared PVC at /mnt/shared,
    and the PVC is ReadWriteMany. Catches a pod writing checkpoints where the others cannot restore them."""
    claims = {doc["metadata"]["name"]: doc for doc in documents_of_kind("PersistentVolumeClaim")}
    assert "ReadWriteMany" in claims[SHARED_CLAIM]["spec"]["accessModes"]
    for name, spec in ray_cluster_specs().items():
        for pod in pod_templates(spec):
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for c in containers(pod) for m in c.get("volumeMounts", [])}
            assert volumes[mounts[SHARED_PATH]]["persistentVolumeClaim"]["claimName"] == SHARED_CLAIM, name


def test_raycluster_and_rayjob_pods_agree():
    """The RayJob's own cluster uses the same pod templates as the RayCluster (image, resources, volumes,
    security context); only replica counts differ. Catches the two copies drifting apart."""
    specs = list(ray_cluster_specs().values())
    assert len(specs) == 2
    first, second = (pod_templates(spec) for spec in specs)
    assert first == second


def test_pods_run_as_non_root():
    """Pods set runAsNonRoot with the image's uid and an fsGroup, so shared volumes are writable without
    root. Catches a pod spec that would run Ray as root if the image's USER were lost."""
    pods = [pod for spec in ray_cluster_specs().values() for pod in pod_templates(spec)]
    pods += [doc["spec"]["template"] for doc in documents_of_kind("Deployment")]
    for pod in pods:
        context = pod["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0 and "fsGroup" in context


def test_rayjob_entrypoint_runs_the_project_with_shared_storage():
    """The entrypoint is `python -m adadim_dist.run --config configs/...` with checkpoints on the shared PVC,
    the in-cluster MLflow server and the .beton cache on node-local disk."""
    config_path, overrides = rayjob_config()
    assert config_path and config_path.startswith("configs/")
    assert f"run.storage_path={SHARED_PATH}/runs" in overrides
    assert "tracking.uri=http://mlflow:5000" in overrides
    assert any(o.startswith("data.cache_dir=/mnt/local/") for o in overrides)


def test_rayjob_entrypoint_is_a_valid_config_that_fits_its_cluster():
    """The entrypoint's config file exists in configs/ and, with its overrides, passes the project's own
    validation (a renamed key or file would make the job fail at start); its Ray Train workers fit the
    RayJob's GPU worker group (training.num_workers GPUs, cpus_per_worker CPUs per pod)."""
    config_path, overrides = rayjob_config()
    if not CONFIGS.is_dir():
        pytest.skip("configs/ is not in this checkout")
    assert (REPO / config_path).is_file(), f"the RayJob names {config_path}, which is not in the repository"
    cfg = load_config(REPO / config_path, overrides)
    assert cfg.training.use_gpu
    (job,) = documents_of_kind("RayJob")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = containers(group["template"])[0]["resources"]["limits"]
    total_gpus = group["replicas"] * int(limits["nvidia.com/gpu"])
    assert total_gpus >= cfg.training.num_workers
    assert float(limits["cpu"]) >= cfg.training.cpus_per_worker
    assert cfg.data.cache_dir is not None and str(cfg.run.storage_path).startswith(SHARED_PATH)


def test_mlflow_server_deployment_and_service():
    """MLflow serves its own artifact store from a PVC, the backend database URI comes from a Secret, and a
    Service named `mlflow` exposes port 5000 (the name the RayJob's tracking.uri uses)."""
    (deployment,) = documents_of_kind("Deployment")
    pod = deployment["spec"]["template"]
    (container,) = containers(pod)
    command = container["command"]
    assert command[:2] == ["sh", "/app/docker/mlflow-server.sh"] and "--serve-artifacts" in command
    destination = next(a.split("=", 1)[1] for a in command if a.startswith("--artifacts-destination="))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[destination]]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"]
    services = {doc["metadata"]["name"]: doc for doc in documents_of_kind("Service")}
    assert services["mlflow"]["spec"]["ports"][0]["port"] == 5000
    selector = services["mlflow"]["spec"]["selector"]
    assert selector and all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())


def test_no_inline_credentials_in_manifests():
    """No container env var that looks like a credential (or a database URI) has an inline value: each comes
    from a Secret. Catches a password committed in a manifest."""
    pods = [pod for spec in ray_cluster_specs().values() for pod in pod_templates(spec)]
    pods += [doc["spec"]["template"] for doc in documents_of_kind("Deployment")]
    for pod in pods:
        for container in containers(pod):
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]) or "STORE_URI" in env["name"]:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    for _, doc in kuberay_documents():
        assert doc["kind"] != "Secret", "Secrets are created out of band, never committed"


def test_mlflow_asks_for_authentication_and_the_ray_pods_log_in():
    """The MLflow pod gets its admin account and CSRF key from the mlflow-auth Secret, and every Ray pod
    logs in with that account. Catches an open tracking server or Ray pods that cannot log in."""
    (deployment,) = documents_of_kind("Deployment")
    (container,) = containers(deployment["spec"]["template"])
    env = {e["name"]: e for e in container["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth", key
    for spec in ray_cluster_specs().values():
        for pod in pod_templates(spec):
            pod_env = {e["name"]: e for c in containers(pod) for e in c.get("env", [])}
            assert pod_env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
                env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]


def test_network_policy_denies_by_default_and_opens_mlflow_to_ray_pods_only():
    """Ingress is denied to every pod of the namespace unless a policy allows it; MLflow's port 5000 is open
    to the Ray pods alone, which every RayCluster / RayJob pod template is labelled as. Catches an MLflow
    server (or Ray's job API) reachable from any pod in the cluster."""
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in documents_of_kind("NetworkPolicy")}
    deny = [p for p in policies.values() if p["podSelector"] == {} and "ingress" not in p]
    assert deny and deny[0]["policyTypes"] == ["Ingress"]
    (deployment,) = documents_of_kind("Deployment")
    mlflow_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (mlflow,) = [p for p in policies.values()
                 if p["podSelector"].get("matchLabels", {}).items() <= mlflow_labels.items() and p["podSelector"]]
    (rule,) = mlflow["ingress"]
    assert [port["port"] for port in rule["ports"]] == [5000]
    (source,) = rule["from"]
    ray_selector = source["podSelector"]["matchLabels"]
    for spec in ray_cluster_specs().values():
        for pod in pod_templates(spec):
            assert ray_selector.items() <= pod["metadata"]["labels"].items()
    assert not ray_selector.items() <= mlflow_labels.items()
