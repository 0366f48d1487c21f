"""Every YAML file of the deployment (cluster/, docker/) and of configs/ parses, and each document is a
mapping. Catches a tab, a bad indent or a stray `:` that `ray up`, `kubectl` or `docker compose` would only
report at deploy time."""

from __future__ import annotations

import pytest

from ._deploy import CONFIGS, REPO, load_yaml_documents

DEPLOYMENT_YAML = sorted(
    [*(REPO / "cluster").rglob("*.yaml"), *(REPO / "cluster").rglob("*.yml"), *(REPO / "docker").glob("*.yaml")]
)
CONFIG_YAML = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")]) if CONFIGS.is_dir() else []


def relative(path) -> str:
    return str(path.relative_to(REPO))


def test_deployment_files_are_found():
    """The glob still sees the files this suite is about (guards against a silent empty parametrisation)."""
    names = {relative(p) for p in DEPLOYMENT_YAML}
    assert {"cluster/ray-cluster-gpu.yaml", "docker/compose.yaml", "cluster/kuberay/rayjob.yaml"} <= names


@pytest.mark.parametrize("path", DEPLOYMENT_YAML, ids=relative)
def test_deployment_yaml_parses(path):
    documents = load_yaml_documents(path)
    assert documents and all(isinstance(doc, dict) for doc in documents)


@pytest.mark.parametrize("path", CONFIG_YAML or [None], ids=lambda p: relative(p) if p else "no-configs")
def test_config_yaml_parses(path):
    """configs/*.yaml (owned by the training side) parse as one mapping each; their keys are validated by
    the config tests. Skipped when configs/ is absent."""
    if path is None:
        pytest.skip("configs/ is not in this checkout")
    (document,) = load_yaml_documents(path)
    assert isinstance(document, dict)
