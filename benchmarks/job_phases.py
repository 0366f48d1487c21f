"""Start-up and evaluation tail of the demo job, this checkout against an earlier commit, side by side.

    python benchmarks/job_phases.py --before REF [--steps 20] [--repeats 2]

Runs ``configs/fmnist_smoke.yaml`` (the demo: 2 DDP workers, kNN bank of 20,000 training images, 10,000 test
queries, k = 20 and 200, random-encoder and raw-pixel baselines) for one short epoch of ``--steps`` steps, so
that a job is start-up, a few steps and the full evaluation. Variants, taking turns:

- ``before``: the code at ``REF`` (a temporary git worktree), its defaults;
- ``after``: this checkout, its defaults (since 2026-12-03 a local instance starts without Ray's dashboard);
- ``after_with_dashboard``: this checkout with ``run.dashboard=true`` (the dashboard's share alone).

Every variant starts its own local Ray instance, as a user's job does. One untimed warm-up job per checkout
first fills the baseline cache and numba's cache. Reports each variant's medians of the ``time/*`` metrics
(start-up phases, evaluation, ``time/tail_s``) and of the job's wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import checkout_at, demo_data_overrides, emit, run_service_job
except ImportError:  # run as a module
    from benchmarks._common import checkout_at, demo_data_overrides, emit, run_service_job

DATA = demo_data_overrides(REPO)


def run_job(checkout: Path, storage: Path, name: str, extra: list[str], steps: int) -> dict[str, float]:
    summary, client, wall = run_service_job(
        ["--config", "configs/fmnist_smoke.yaml", "training.epochs=1", f"training.max_steps_per_epoch={steps}",
         f"run.storage_path={storage}", f"run.name={name}", "tracking.experiment=job-phases", *DATA, *extra],
        name, checkout)
    metrics = client.get_run(summary["run_id"]).data.metrics
    return {"wall_s": wall, "knn_top1": summary["knn_top1"],
            **{k: v for k, v in metrics.items() if k.startswith("time/")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare against")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, checkout_at(REPO, args.before, scratch) as before:
        variants = {"before": (before, []), "after": (REPO, []),
                    "after_with_dashboard": (REPO, ["run.dashboard=true"])}
        results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
        storage = Path(scratch) / "runs"
        for label, checkout in (("before", before), ("after", REPO)):
            print(f"[bench] warm-up job ({label})", file=sys.stderr, flush=True)
            run_job(checkout, storage, f"warm-up-{label}", [], args.steps)
        for index in range(args.repeats):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for variant in order:
                print(f"[bench] {variant} #{index + 1}", file=sys.stderr, flush=True)
                checkout, extra = variants[variant]
                results[variant].append(run_job(checkout, storage, f"{variant}-{index}", extra, args.steps))
    medians = {variant: {key: round(statistics.median(r[key] for r in runs), 1)
                         for key in sorted(set().union(*runs)) if all(key in r for r in runs)}
               for variant, runs in results.items()}
    emit({
        "benchmark": "job_phases",
        "before": args.before,
        "config": "configs/fmnist_smoke.yaml (demo: 2 DDP workers, bank 20,000, 10,000 queries, k 20 and 200, "
                  "baselines cached), a local Ray instance per job",
        "steps": args.steps,
        "repeats": args.repeats,
        **{f"{variant}_median": values for variant, values in medians.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
