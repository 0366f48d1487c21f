"""Shared fixtures: tiny real .beton files written once per test session from the installed Fashion-MNIST."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
