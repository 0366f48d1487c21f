"""Start-up phases from the driver's and rank 0's wall-clock stamps (``adadim_dist.training.timing``)."""

import time

import pytest

from adadim_dist.training import timing
from adadim_dist.training.timing import (STEP_PHASES, StepClock, describe_startup, process_started_at,
                                         startup_phases)

STAMPS = {"command_started_at": 100.0, "ray_ready_at": 109.5, "worker_started_at": 115.0,
          "loaders_ready_at": 118.0, "engine_ready_at": 119.0, "first_step_done_at": 131.0}


def test_phases_are_the_gaps_between_stamps_and_add_up_to_the_total():
    phases = startup_phases(STAMPS)
    assert phases == pytest.approx({"time/ray_s": 9.5, "time/workers_s": 5.5, "time/loaders_s": 3.0,
                                    "time/model_s": 1.0, "time/first_step_s": 12.0, "time/to_first_step_s": 31.0})
    assert describe_startup(phases) == ("31 s to the first step (Ray 10 s, workers 6 s, loaders 3 s, model 1 s, "
                                        "first step 12 s)")


def test_a_restarted_worker_group_reports_its_own_phases_only():
    own = {k: v for k, v in STAMPS.items() if k not in ("command_started_at", "ray_ready_at")}
    phases = startup_phases(own)
    assert set(phases) == {"time/loaders_s", "time/model_s", "time/first_step_s", "time/to_first_step_s"}
    assert phases["time/to_first_step_s"] == pytest.approx(16.0)  # from the worker's own start


def test_no_first_step_yet_means_no_total_and_no_summary_line():
    stamps = {k: v for k, v in STAMPS.items() if k != "first_step_done_at"}
    assert "time/to_first_step_s" not in startup_phases(stamps)
    assert describe_startup(startup_phases(stamps)) is None


def test_this_process_started_before_now():
    assert 0 <= time.time() - process_started_at() < 24 * 3600


def test_a_launch_script_that_execs_python_is_reported_apart(tmp_path):
    """scripts/demo.sh runs its set-up, then execs Python in the same process: the process's creation time is
    the script's. With ADADIM_EXEC_AT, start-up counts from Python, and the script's time is named apart."""
    import os
    import subprocess
    import sys

    code = ("from adadim_dist.training.timing import process_started_at, time_before_python as b; "
            "import time; print(time.time() - process_started_at(), b())")
    script = tmp_path / "launch.sh"
    script.write_text(f'sleep 2\nADADIM_EXEC_AT="$(date +%s.%N)" exec {sys.executable} -c "{code}"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    since_python, before = map(float, subprocess.run(["bash", str(script)], capture_output=True, text=True,
                                                      env=env, check=True).stdout.split())
    assert since_python < 2.0 <= before < 10.0
    # A stale value inherited from an earlier launcher is ignored.
    env["ADADIM_EXEC_AT"] = "1000.0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[1] == "None"
    phases = startup_phases({**STAMPS, "before_python_s": before})
    assert describe_startup(phases).endswith(f"; before that, {before:.0f} s in the launch script before Python "
                                             "started")


def test_the_step_clock_gives_each_phase_its_mean_time_per_step_and_starts_a_new_window(monkeypatch):
    """Two steps whose phases last 1, 2, ... 7 ms (second step: twice that): the window's mean per phase is 1.5×
    each; the next window starts empty. Switched off (a GPU), it reports nothing."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    clock = StepClock()
    for scale in (1, 2):
        for duration, phase in enumerate(STEP_PHASES, start=1):
            now[0] += scale * duration / 1e3
            clock.lap(phase)
    assert clock.window_ms() == pytest.approx({f"time/step_{p}_ms": 1.5 * d for d, p in enumerate(STEP_PHASES, 1)})
    assert clock.window_ms() == {}
    off = StepClock(enabled=False)
    off.lap("loader_wait")
    assert off.window_ms() == {}
