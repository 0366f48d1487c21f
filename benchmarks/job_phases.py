"""Start-up and evaluation tail of the demo job, side by side: this checkout against an earlier commit, on a
local Ray instance or a running cluster, warm or cold, its evaluation split across the ranks or on rank 0 alone.

    python benchmarks/job_phases.py --before REF [--steps 20] [--repeats 2] [--variants before,after,...]
    python benchmarks/job_phases.py --variants after,after_rank0_eval     # no --before without a before* variant

Runs ``configs/fmnist_smoke.yaml`` (the demo's set-up: its layout, kNN bank of 20,000 training images, 10,000 test
queries, k = 20 and 200, random-encoder and raw-pixel baselines) for one short epoch of ``--steps`` steps, so
that a job is start-up, a few steps and the full evaluation. Variants, taking turns:

- ``before``: the code at ``REF`` (a temporary git worktree), its defaults;
- ``after``: this checkout, its defaults (since 2026-12-03 a local instance starts without Ray's dashboard);
- ``after_with_dashboard``: this checkout with ``run.dashboard=true`` (the dashboard's share alone);
- ``before_cluster`` and ``after_cluster``: each checkout's job on a running Ray cluster (``RAY_ADDRESS``: a
  head node the benchmark starts with ``ray start`` and keeps up), as jobs on a user's cluster run;
- ``after_cold``: this checkout with an empty numba cache (``NUMBA_CACHE_DIR``, fresh for each job) and a local
  instance: what a job pays where no earlier job ran (the operating system's file cache stays warm);
- ``after_rank0_eval``: this checkout with ``eval.split_across_ranks=false`` (rank 0 evaluates alone; the
  default splits the bank and the test set across every rank);
- ``after_without_datasets_hook`` and ``after_without_coordinator_hook``: this checkout with one of its private
  Ray hooks turned off (``benchmarks/_run_without_hooks.py``): what each buys (issue 27, item 7).

Variants without ``_cluster`` start a local Ray instance per job, as a user's job does without ``RAY_ADDRESS``.
One untimed warm-up job per checkout first fills the baseline cache and numba's cache (and, with cluster
variants, one per checkout on the cluster). Reports each variant's medians of the ``time/*`` metrics (start-up phases,
evaluation, ``time/tail_s``) and of the job's wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import checkout_at, demo_data_overrides, emit, run_service_job, running_ray_cluster, time_metrics
except ImportError:  # run as a module
    from benchmarks._common import (checkout_at, demo_data_overrides, emit, run_service_job, running_ray_cluster,
                                    time_metrics)

DATA = demo_data_overrides(REPO)


VARIANTS = ("before", "after", "after_with_dashboard", "before_cluster", "after_cluster", "after_cold",
            "after_rank0_eval", "after_without_datasets_hook", "after_without_coordinator_hook")
WITHOUT_HOOKS = {"after_without_datasets_hook": "datasets_callback",
                 "after_without_coordinator_hook": "autoscaling_coordinator"}
COLD = "cold"  # a variant's environment marker: a fresh, empty numba cache for each of its jobs


def run_job(checkout: Path, storage: Path, name: str, extra: list[str], steps: int,
            env: dict | None = None, without_hooks: str | None = None) -> dict[str, float]:
    launcher = [str(REPO / "benchmarks" / "_run_without_hooks.py"), without_hooks] if without_hooks else None
    summary, client, wall = run_service_job(
        ["--config", "configs/fmnist_smoke.yaml", "training.epochs=1", f"training.max_steps_per_epoch={steps}",
         f"run.storage_path={storage}", f"run.name={name}", "tracking.experiment=job-phases", *DATA, *extra],
        name, checkout, env, launcher)
    return {"wall_s": wall, "knn_top1": summary["knn_top1"], **time_metrics(client, summary["run_id"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git ref of the code to compare against (needed by the before* variants)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="before,after,before_cluster,after_cluster",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    chosen = args.variants.split(",")
    if unknown := set(chosen) - set(VARIANTS):
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    needs_before = any(v.startswith("before") for v in chosen)
    if needs_before and not args.before:
        parser.error("--before REF is needed by the before* variants")
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory())
        before = stack.enter_context(checkout_at(REPO, args.before, scratch)) if needs_before else None
        cluster = stack.enter_context(running_ray_cluster(scratch)) if any(v.endswith("_cluster") for v in chosen) \
            else None
        known = {"before": (before, [], None), "after": (REPO, [], None),
                 "after_with_dashboard": (REPO, ["run.dashboard=true"], None),
                 "before_cluster": (before, [], cluster), "after_cluster": (REPO, [], cluster),
                 "after_cold": (REPO, [], COLD), "after_rank0_eval": (REPO, ["eval.split_across_ranks=false"], None),
                 **{variant: (REPO, [], None) for variant in WITHOUT_HOOKS}}
        variants = {variant: known[variant] for variant in chosen}
        results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
        storage = Path(scratch) / "runs"
        warm_ups = {(checkout, env is not None): (checkout, env) for checkout, _, env in variants.values()
                    if env != COLD}
        for index, (checkout, env) in enumerate(warm_ups.values()):
            print(f"[bench] warm-up job {index + 1}/{len(warm_ups)}", file=sys.stderr, flush=True)
            run_job(checkout, storage, f"warm-up-{index}", [], args.steps, env)
        for index in range(args.repeats):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for variant in order:
                print(f"[bench] {variant} #{index + 1}", file=sys.stderr, flush=True)
                checkout, extra, env = variants[variant]
                if env == COLD:
                    env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="numba-", dir=scratch)}
                results[variant].append(run_job(checkout, storage, f"{variant}-{index}", extra, args.steps, env,
                                                WITHOUT_HOOKS.get(variant)))
    medians = {variant: {key: round(statistics.median(r[key] for r in runs), 1)
                         for key in sorted(set().union(*runs)) if all(key in r for r in runs)}
               for variant, runs in results.items()}
    emit({
        "benchmark": "job_phases",
        "before": args.before,
        "config": "configs/fmnist_smoke.yaml (its layout, bank 20,000, 10,000 queries, k 20 and 200, "
                  "baselines cached); a local Ray instance per job, or a running cluster (*_cluster)",
        "steps": args.steps,
        "repeats": args.repeats,
        **{f"{variant}_median": values for variant, values in medians.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
