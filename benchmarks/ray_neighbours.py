"""What idle Ray processes cost a training loop that uses every core: the plain loop of service_overhead.py
alone, beside a local Ray instance, and inside a Ray task, each with and without idle actors beside it.

    python benchmarks/ray_neighbours.py [--steps 160] [--repeats 3] [--actors 5]

Each Ray worker process wakes ~150 times a second even when idle (its main thread checks for signals every
10 ms, and its RPC threads poll); on a machine whose cores all train, each wake-up preempts a training thread.
The variants run in turn (``--repeats`` rounds, so a drift in the machine's speed hits all), each in a fresh
Ray instance; rate = median images/s over the loop's 20-step windows, the first dropped; the machine's
context switches per second over the whole variant are recorded with it. ``--actors`` idle actors (0 CPUs,
as Ray Train's controller, synchronisation actor and autoscaling coordinator are) stand in for a job's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import emit  # noqa: E402

VARIANTS = ("alone", "beside_ray", "beside_ray_and_actors", "in_ray_task", "in_ray_task_with_actors")


def context_switches() -> int:
    with open("/proc/stat") as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("ctxt"))


def plain_loop_command(steps: int) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "service_overhead.py"), "--plain-loop", "--steps", str(steps)]


def run_variant(variant: str, steps: int, actors: int) -> dict:
    """The plain loop's windows (images/s) under ``variant``, and the machine's context switches per second."""
    started, switches = time.monotonic(), context_switches()
    if variant == "alone":
        windows = json.loads(subprocess.run(plain_loop_command(steps), cwd=REPO, capture_output=True, text=True,
                                            check=True).stdout.strip().splitlines()[-1])["rates"]
    else:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            @ray.remote(num_cpus=0)
            class Idle:
                def ready(self) -> bool:
                    return True

            neighbours = [Idle.remote() for _ in range(actors if variant.endswith("actors") else 0)]
            ray.get([actor.ready.remote() for actor in neighbours])
            if variant.startswith("in_ray_task"):
                @ray.remote(num_cpus=2)
                def train(repo: str) -> list[float]:
                    sys.path[:0] = [repo, repo + "/benchmarks"]
                    os.chdir(repo)
                    import service_overhead

                    return service_overhead.plain_loop(steps, service_overhead.DEFAULT_CONFIG)["rates"]

                windows = ray.get(train.remote(str(REPO)))
            else:
                windows = json.loads(subprocess.run(plain_loop_command(steps), cwd=REPO, capture_output=True,
                                                    text=True, check=True).stdout.strip().splitlines()[-1])["rates"]
        finally:
            ray.shutdown()
    seconds = time.monotonic() - started
    return {"images_per_s": statistics.median(windows[1:]),
            "context_switches_per_s": (context_switches() - switches) / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--actors", type=int, default=5)
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_index in range(args.repeats):
        for variant in VARIANTS:
            print(f"[bench] round {round_index + 1}: {variant}", file=sys.stderr, flush=True)
            results[variant].append(run_variant(variant, args.steps, args.actors))
    alone = statistics.fmean(r["images_per_s"] for r in results["alone"])
    emit({"benchmark": "ray_neighbours", "steps": args.steps, "repeats": args.repeats, "idle_actors": args.actors,
          "images_per_s": {v: [round(r["images_per_s"], 1) for r in rs] for v, rs in results.items()},
          "against_alone": {v: round(statistics.fmean(r["images_per_s"] for r in rs) / alone, 3)
                            for v, rs in results.items()},
          "context_switches_per_s": {v: round(statistics.fmean(r["context_switches_per_s"] for r in rs))
                                     for v, rs in results.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
