"""Shared helpers for the benchmark scripts: the machine's description and the JSON result line, side-by-side
timing, running a job as a user does and reading its figures back, where a machine's CPU time goes by process, a
free port, a before/after checkout and a running Ray cluster."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def machine() -> str:
    from adadim_dist.training.tracking import cpu_model

    return f"{cpu_model()}, {platform.system()} {platform.release()}"


def emit(result: dict) -> None:
    """Print one JSON line (date, machine, command first) for BENCHMARKS.md."""
    line = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python " + " ".join(sys.argv),
        **result,
    }
    print(json.dumps(line))


def alternating_medians(steps: dict[str, Callable[[], None]], timed: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step, after ``warmup`` untimed calls each, the steps taking turns so
    that drifts of the machine's speed hit every variant alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(timed):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def process_group(cmdline: str, comm: str) -> str:
    """Which part of a job a process is, from its command line: the Ray Train workers, the plain loop, the
    service loop (the worker's code without Ray), the job's driver, the other Ray actors (controller, synchronisation), Ray's daemons, or anything else on the machine."""
    if cmdline.startswith("ray::RayTrainWorker"):
        return "train_workers"
    if "--plain-loop" in cmdline:
        return "plain_loop"
    if "--service-loop" in cmdline:
        return "service_loop"
    if "adadim_dist.run" in cmdline:
        return "driver"
    if cmdline.startswith("ray::") and "Agent" not in cmdline:
        return "ray_actors"
    if comm in ("gcs_server", "raylet") or "/ray/" in cmdline or cmdline.startswith("ray::"):
        return "ray_daemons"  # GCS, raylet, dashboard and its agents, log monitor, autoscaler monitor
    return "other"


def ray_process_name(cmdline: str, comm: str) -> str:
    """A Ray process's own name within its group: the actor's class ("ray::TrainController.run" →
    "TrainController"), or the daemon's executable or Python module ("raylet", "gcs_server", "log_monitor")."""
    if cmdline.startswith("ray::"):
        return cmdline.split()[0].removeprefix("ray::").split(".")[0]
    if comm in ("gcs_server", "raylet"):
        return comm
    script = next((part for part in cmdline.split() if part.endswith(".py")), comm)
    return Path(script).stem


class CpuByProcessGroup:
    """Samples every process's CPU time (/proc/PID/stat utime + stime) each ``interval`` seconds in a thread and
    sums the increments by ``process_group``, and for Ray's actors and daemons also by each one's name
    (``ray_actors/TrainController``, ``ray_daemons/raylet``, ...). ``busy_cores(main)``: each group's mean CPU
    use, in cores, over the samples in which the ``main`` group used at least ``threshold`` cores (its steady
    work; start-up and idle tails left out)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[dict[str, float]] = []  # cores used by each group since the previous sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu_seconds() -> dict[int, tuple[tuple[str, ...], float]]:  # pid → (its groups, CPU seconds)
        ticks = os.sysconf("SC_CLK_TCK")
        result = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # the process ended meanwhile
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            group = process_group(cmdline, comm)
            groups = (group, f"{group}/{ray_process_name(cmdline, comm)}") if group.startswith("ray_") else (group,)
            result[int(entry.name)] = (groups, (int(fields[11]) + int(fields[12])) / ticks)
        return result

    def _run(self) -> None:
        previous, before = self._cpu_seconds(), time.monotonic()
        while not self._stop.wait(self.interval):
            current, now = self._cpu_seconds(), time.monotonic()
            used: dict[str, float] = {}
            for pid, (groups, seconds) in current.items():
                for group in groups:
                    used[group] = used.get(group, 0.0) + seconds - previous.get(pid, (groups, 0.0))[1]
            self.samples.append({group: value / (now - before) for group, value in used.items()})
            previous, before = current, now

    def __enter__(self) -> "CpuByProcessGroup":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def busy_cores(self, main: str, threshold: float = 1.0) -> dict[str, float]:
        busy = [sample for sample in self.samples if sample.get(main, 0.0) >= threshold]
        groups = sorted({group for sample in busy for group in sample})
        return {"samples": len(busy), **{group: round(statistics.fmean(s.get(group, 0.0) for s in busy), 3)
                                         for group in groups}}


def free_port() -> int:
    """A free TCP port on the loopback interface (for a process group's rendezvous or a Ray head node)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def images_per_s_windows(client, run_id: str, key: str = "train/images_per_s") -> list[float]:
    """A job's logging windows of ``key`` (by default its images/s) in step order, the first (start-up, JIT
    compilation) dropped."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in history[1:]]


def time_metrics(client, run_id: str) -> dict[str, float]:
    """A job's start-up phases, evaluation and tail (the ``time/*_s`` metrics, ``adadim_dist/training/timing.py``;
    not the per-window step phases)."""
    return {k: v for k, v in client.get_run(run_id).data.metrics.items()
            if k.startswith("time/") and not k.startswith("time/step_")}


def run_service_job(overrides: list[str], name: str, cwd, env: dict | None = None,
                    launcher: list[str] | None = None) -> tuple[dict, object, float]:
    """``python -m adadim_dist.run`` with ``overrides`` as a user runs it (``env`` added to the environment;
    ``launcher`` in place of ``-m adadim_dist.run``): (its summary, an MLflow client for its tracking store,
    wall seconds). Exits with the job's output if it fails."""
    import subprocess

    from mlflow.tracking import MlflowClient

    started = time.time()
    out = subprocess.run([sys.executable, *(launcher or ["-m", "adadim_dist.run"]), *overrides], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.time() - started
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return summary, MlflowClient(tracking_uri=summary["tracking_uri"]), wall


def demo_data_overrides(repo) -> list[str]:
    """The demo's Fashion-MNIST files by absolute path, so that a job run from another checkout reads them too."""
    return [f"data.train_path={repo / 'data' / 'fashion_mnist_train.beton'}",
            f"data.test_path={repo / 'data' / 'fashion_mnist_test.beton'}"]


@contextlib.contextmanager
def checkout_at(repo, ref: str, parent):
    """A temporary git worktree of ``repo`` at ``ref`` under ``parent`` (removed on exit): the "before" side of a
    before/after benchmark."""
    import subprocess
    from pathlib import Path

    path = Path(parent) / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=repo, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)


@contextlib.contextmanager
def running_ray_cluster(parent):
    """A Ray head node started with ``ray start`` (token authentication on, dashboard on loopback), stopped on
    exit by killing its own processes (``ray stop`` would stop every Ray instance on the machine): yields the
    environment a job needs to use it (``RAY_ADDRESS``), as on a user's running cluster."""
    import subprocess
    import tempfile
    from pathlib import Path

    import psutil

    port = free_port()
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    temp_dir = tempfile.mkdtemp(prefix="bench_ray_", dir="/tmp")  # short: Ray's socket paths have a limit
    subprocess.run([ray, "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, cwd=parent)
    try:
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"}
    finally:
        # The head's processes name its temp dir or its address on their command lines.
        own = [p for p in psutil.process_iter(["cmdline"])
               if any(temp_dir in part or part.endswith(f":{port}") for part in p.info["cmdline"] or [])]
        for process in own:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in process.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                process.kill()
        psutil.wait_procs(own, timeout=30)
