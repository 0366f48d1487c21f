"""The benchmarks' CPU accounting by process group (benchmarks/_common.py), against a real busy process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _common import CpuByProcessGroup, process_group, ray_process_name  # noqa: E402


def test_process_groups_follow_the_command_line():
    assert process_group("ray::RayTrainWorker", "ray::RayTrainWo") == "train_workers"
    assert process_group("python benchmarks/service_overhead.py --plain-loop --steps 9", "python") == "plain_loop"
    assert process_group("python benchmarks/service_overhead.py --service-loop --steps 9", "python") == "service_loop"
    assert process_group("python -m adadim_dist.run --config c.yaml", "python") == "driver"
    assert process_group("ray::TrainController.run", "ray::TrainContr") == "ray_actors"
    assert process_group("ray::DashboardAgent", "ray::DashboardA") == "ray_daemons"
    assert process_group("/venv/lib/ray/core/src/ray/raylet/raylet --x", "raylet") == "ray_daemons"
    assert process_group("/usr/bin/sshd", "sshd") == "other"
    assert ray_process_name("ray::TrainController.run", "ray::TrainContr") == "TrainController"
    assert ray_process_name("/venv/lib/ray/core/src/ray/raylet/raylet --x", "raylet") == "raylet"
    assert ray_process_name("/venv/bin/python -u /venv/lib/ray/_private/log_monitor.py --x", "python") == "log_monitor"


def test_a_spinning_process_is_counted_as_about_one_core_of_its_group():
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    with CpuByProcessGroup(interval=0.5) as cpu:
        subprocess.run([sys.executable, "-c", spin, "--plain-loop"], check=True)
    busy = cpu.busy_cores("plain_loop", threshold=0.1)
    assert busy["samples"] >= 3
    assert 0.6 <= busy["plain_loop"] <= 1.05  # one thread: never more than a core, most of one on 2 cores
