"""Shared fixtures: tiny real .beton files written once per test session from the installed Fashion-MNIST."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One real head node (``ray start --head``: dashboard on loopback, token authentication at its default,
    on) shared by the integration tests, which saves a Ray start-up per training run. Yields the environment
    a client needs to reach it, and the dashboard's address."""
    ray = str(Path(sys.executable).parent / "ray")
    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="adadim_ray_", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, cwd=REPO, env=env, capture_output=True, timeout=180)
    try:
        yield {"env": {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"},
               "dashboard": f"http://127.0.0.1:{dashboard_port}", "dashboard_port": dashboard_port}
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
