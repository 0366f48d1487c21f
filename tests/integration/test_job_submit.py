"""`ray start --head` + `ray job submit` with token authentication on (SPEC §4): a client without the token is
refused; the dashboard listens on 127.0.0.1 only. A real job through `ray job submit` (a 2-worker DeepSpeed
ZeRO-2 job resuming from its checkpoint, final JSON line in the job's logs) is in test_deepspeed_stages.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")


def submit(address: str, entrypoint: list[str], token: bool, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    if token:
        env["RAY_AUTH_MODE"] = "token"
    return subprocess.run([RAY, "job", "submit", "--address", address, "--", *entrypoint], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dashboard_listens_on_loopback_only(ray_cluster):
    import psutil

    listening = [c.laddr.ip for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_cluster["dashboard_port"]]
    assert listening and set(listening) == {"127.0.0.1"}


def test_client_without_token_is_refused(ray_cluster):
    out = submit(ray_cluster["dashboard"], [sys.executable, "-c", "print('should not run')"], token=False,
                 timeout=120)
    assert out.returncode != 0
    assert "should not run" not in out.stdout
    assert "auth" in (out.stdout + out.stderr).lower()
