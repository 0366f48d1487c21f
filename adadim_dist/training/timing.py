"""Where a job's wall time goes before its first step and after its last one.

The driver and rank 0 stamp wall-clock times (``time.time()``: the phases cross processes, and on a cluster
machines, so a per-process monotonic clock cannot be used) into one ``Timeline``; ``startup_phases`` turns
them into durations logged as ``time/*`` metrics and printed in the job's summary:

    command → ray ready → worker started → loaders built → model and engine built → first step done
    (``time/ray_s``, ``time/workers_s``, ``time/loaders_s``, ``time/model_s``, ``time/first_step_s``; their
    sum is ``time/to_first_step_s``), and after the last step ``time/tail_s`` (evaluation, baselines,
    checkpoint, export, shut-down) until the driver has the result.

The first step includes FFCV's compilation of the loader pipeline (its generated code is compiled by numba
at the first batch, in every process) and, under DDP, the first gradient all-reduce.

Within the steps, ``StepClock`` splits each step's wall time into its phases (``time/step_*_ms``).
"""

from __future__ import annotations

import os
import time

PHASES = [  # (metric, stamp at which the phase starts, stamp at which it ends)
    ("time/ray_s", "command_started_at", "ray_ready_at"),
    ("time/workers_s", "ray_ready_at", "worker_started_at"),
    ("time/loaders_s", "worker_started_at", "loaders_ready_at"),
    ("time/model_s", "loaders_ready_at", "engine_ready_at"),
    ("time/first_step_s", "engine_ready_at", "first_step_done_at"),
]


def process_started_at() -> float:
    """Wall-clock time Python started in this process (its interpreter start-up and imports count as start-up).

    A launcher script that ``exec``s Python (``scripts/demo.sh``) hands its own process over, so the process's
    creation time is the script's: such a script passes the moment it exec'd as ``ADADIM_EXEC_AT``, and its own
    time (the set-up before Python) is reported apart, by ``time_before_python``."""
    created = _process_created_at()
    launched = _exec_at(created)
    return launched if launched is not None else created


def time_before_python() -> float | None:
    """Seconds the launcher spent in this process before it exec'd Python (None when not launched that way)."""
    created = _process_created_at()
    launched = _exec_at(created)
    return None if launched is None else launched - created


def _process_created_at() -> float:
    try:
        import psutil  # a Ray dependency

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil or no /proc: from here on is the best we know
        return time.time()


def _exec_at(created: float) -> float | None:
    try:
        launched = float(os.environ["ADADIM_EXEC_AT"])
    except (KeyError, ValueError):
        return None
    # Inherited from some earlier launcher (not this process's own): ignored. 1 s of slack for clock rounding.
    return launched if created - 1.0 <= launched <= time.time() else None


def startup_phases(stamps: dict[str, float | None]) -> dict[str, float]:
    """``time/*_s`` durations of the phases whose two stamps are both known, and their total to the first step.

    A restarted worker group has no command or Ray stamps of its own (they belong to the first start), so only
    its own phases are reported then.
    """
    phases = {}
    for metric, start, end in PHASES:
        if stamps.get(start) is not None and stamps.get(end) is not None:
            phases[metric] = max(stamps[end] - stamps[start], 0.0)
    if stamps.get("before_python_s"):  # a duration, not a stamp: the launch script's time, outside the total
        phases["time/before_python_s"] = float(stamps["before_python_s"])
    first = next((stamps[start] for _, start, _ in PHASES if stamps.get(start) is not None), None)
    if first is not None and stamps.get("first_step_done_at") is not None:
        phases["time/to_first_step_s"] = max(stamps["first_step_done_at"] - first, 0.0)
    return phases


def describe_startup(metrics: dict[str, float]) -> str | None:
    """One line for the summary: ``63 s to the first step (Ray 9 s, workers 6 s, ...)``."""
    total = metrics.get("time/to_first_step_s")
    if total is None:
        return None
    names = {"time/ray_s": "Ray", "time/workers_s": "workers", "time/loaders_s": "loaders",
             "time/model_s": "model", "time/first_step_s": "first step"}
    parts = ", ".join(f"{name} {metrics[key]:.0f} s" for key, name in names.items() if key in metrics)
    before = metrics.get("time/before_python_s")
    launcher = f"; before that, {before:.0f} s in the launch script before Python started" if before else ""
    return f"{total:.0f} s to the first step ({parts}){launcher}"


#: The phases of a training step, in order. ``loader_wait``: waiting for the loader's next batch; ``forward``:
#: both views through the model; ``objective``: the loss and the probe's (with the objective's collectives);
#: ``backward``: gradients (under DDP with their all-reduce, which overlaps it); ``checks``: the agreed finiteness
#: check (a pass over the gradients and an all-reduce); ``update``: the optimizer, scheduler and objective steps;
#: ``monitors``: metrics, progress and tracking.
STEP_PHASES = ("loader_wait", "forward", "objective", "backward", "checks", "update", "monitors")


class StepClock:
    """Wall time per phase of the training step, averaged over the steps of a logging window.

    On a CPU operations run synchronously, so the phase boundaries are exact. On a GPU kernels run
    asynchronously and the phases would measure launches, so the clock is off there (use a profiler).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.totals = dict.fromkeys(STEP_PHASES, 0.0)
        self.steps = 0
        self.last = time.perf_counter()

    def restart(self) -> None:
        """Start timing from now: before the first batch of an epoch."""
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The time since the last lap belongs to ``phase``; ``loader_wait`` starts a step."""
        if not self.enabled:
            return
        now = time.perf_counter()
        self.totals[phase] += now - self.last
        self.last = now
        self.steps += phase == STEP_PHASES[0]

    def window_ms(self) -> dict[str, float]:
        """``time/step_<phase>_ms`` averaged over the steps since the last call (a step's monitors phase counts
        in the window after it); empty when off. Resets the window."""
        if not self.enabled or self.steps == 0:
            return {}
        window = {f"time/step_{phase}_ms": 1e3 * total / self.steps for phase, total in self.totals.items()}
        self.totals, self.steps = dict.fromkeys(STEP_PHASES, 0.0), 0
        return window
