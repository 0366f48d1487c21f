"""How much of a job's start-up is Ray Train's own: a bare Ray Train job against the service's, side by side.

    python benchmarks/startup_floor.py [--repeats 2]

On a running Ray cluster (a head node the benchmark starts with ``ray start``, as on a user's cluster), taking
turns, each variant a fresh driver process, as a user's command is:

- ``ray_train_noop``: a driver that connects and runs the service's trainer class (``torch_trainer_class``, with
  the service's controller settings) with 2 workers × 0.5 CPU whose function returns at once. Its time from the
  command to the workers' function is what any Ray Train job of this shape pays on this machine.
- ``ray_train_ffcv``: the same, and each worker then builds the demo's FFCV training loader and takes its first
  batch (FFCV's per-process compilation, which no cache removes: see BENCHMARKS.md).
- ``service``: ``python -m adadim_dist.run`` on the demo config for 20 steps (its ``time/*`` phases).

Reports medians: seconds from the command to the workers' function (``to_worker_s``), to the first batch
(``ray_train_ffcv``) or the first step (``service``), and the bare jobs' ``fit`` wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import demo_data_overrides, emit, running_ray_cluster
    from job_phases import run_job
except ImportError:  # run as a module
    from benchmarks._common import demo_data_overrides, emit, running_ray_cluster
    from benchmarks.job_phases import run_job

DATA = demo_data_overrides(REPO)
VARIANTS = ("ray_train_noop", "ray_train_ffcv", "service")


def bare_worker(config: dict) -> None:
    """A bare job's worker: stamps its entry and, with ``ffcv``, its first batch of the demo's loader."""
    import ray.train

    entered = time.time()
    first_batch = None
    if config["ffcv"]:
        from adadim_dist.config import load_config
        from adadim_dist.data import build_ssl_loader

        cfg = load_config(str(REPO / "configs/fmnist_smoke.yaml"), DATA)
        context = ray.train.get_context()
        loader = build_ssl_loader(cfg.data, cfg.training.batch_size_per_worker, context.get_world_rank(),
                                  context.get_world_size(), cfg.training.seed, distributed=True)
        next(iter(loader))
        first_batch = time.time()
    # To a file: Ray Train 2.60's result keeps no metrics that were reported without a checkpoint.
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["stamps"]).write_text(json.dumps({"entered": entered, "first_batch": first_batch}))


def bare_job(ffcv: bool, storage: str) -> None:
    """The driver of a bare job (run in its own process): prints its stamps as one JSON line."""
    from adadim_dist.training.driver import set_controller_defaults, torch_trainer_class
    from adadim_dist.training.timing import process_started_at
    import ray
    from ray.train import RunConfig, ScalingConfig

    started = process_started_at()  # the process's creation: its imports count, as in the service's time/ray_s
    set_controller_defaults()
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    fit_started = time.time()
    name = f"bare-{time.time_ns()}"
    stamps = Path(storage) / f"{name}.json"
    stamps.parent.mkdir(parents=True, exist_ok=True)
    torch_trainer_class()(
        bare_worker, train_loop_config={"ffcv": ffcv, "stamps": str(stamps)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name=name, storage_path=storage),
    ).fit()
    ended = time.time()
    worker = json.loads(stamps.read_text())
    print(json.dumps({"to_worker_s": worker["entered"] - started,
                      "to_first_batch_s": (worker["first_batch"] - started) if ffcv else None,
                      "fit_s": ended - fit_started, "wall_s": ended - started}), flush=True)


def run_bare(ffcv: bool, storage: Path, env: dict) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--bare-job", "ffcv" if ffcv else "noop", "--storage",
                          str(storage)], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"bare job failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return {k: v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items() if v is not None}


def run_service(storage: Path, name: str, env: dict) -> dict[str, float]:
    metrics = run_job(REPO, storage, name, [], 20, env)  # the demo config, one epoch of 20 steps
    return {"to_worker_s": metrics["time/ray_s"] + metrics["time/workers_s"],
            "to_first_step_s": metrics["time/to_first_step_s"], "wall_s": metrics["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bare-job", choices=("noop", "ffcv"), help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_job:
        bare_job(args.bare_job == "ffcv", args.storage)
        return 0
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = stack.enter_context(running_ray_cluster(scratch))
        jobs = {"ray_train_noop": lambda name: run_bare(False, scratch / "bare", env),
                "ray_train_ffcv": lambda name: run_bare(True, scratch / "bare", env),
                "service": lambda name: run_service(scratch / "runs", name, env)}
        for variant, job in jobs.items():  # fills numba's cache and the baselines' cache, starts nothing cold
            print(f"[bench] warm-up {variant}", file=sys.stderr, flush=True)
            job(f"warm-up-{variant}")
        for index in range(args.repeats):
            for variant in (VARIANTS if index % 2 == 0 else tuple(reversed(VARIANTS))):
                print(f"[bench] {variant} #{index + 1}", file=sys.stderr, flush=True)
                results[variant].append(jobs[variant](f"{variant}-{index}"))
    medians = {variant: {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
               for variant, runs in results.items()}
    emit({"benchmark": "startup_floor",
          "config": "a running Ray cluster; 2 workers x 0.5 CPU; the demo's FFCV loader and config",
          "repeats": args.repeats, **{f"{variant}_median": values for variant, values in medians.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
