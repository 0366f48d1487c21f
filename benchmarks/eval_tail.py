"""The demo's evaluation tail and start-up, with the evaluation split across the ranks and on rank 0 alone.

    python benchmarks/eval_tail.py [--steps 20] [--repeats 2]

Runs ``configs/fmnist_smoke.yaml`` (the demo: 2 DDP workers, kNN bank of 20,000 training images, 10,000 test
queries, k = 20 and 200, random-encoder and raw-pixel baselines) for one short epoch of ``--steps`` steps, so
that the job is start-up, a few steps and the full evaluation, alternating ``eval.split_across_ranks=true``
(each rank embeds and searches its part of the bank and embeds its part of the test set) and ``false`` (rank 0
evaluates alone). One
untimed warm-up job first fills the baseline cache and numba's cache for both, so every timed job is warm.
Reports, per variant, the medians of ``time/tail_s`` (last step → the driver has the result),
``time/eval_s`` (rank 0's evaluation), ``time/eval_extract_s`` and the start-up phases ``time/*``, and the
job's wall time.
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
    from _common import emit, run_service_job
except ImportError:  # run as a module
    from benchmarks._common import emit, run_service_job

VARIANTS = {"split": "eval.split_across_ranks=true", "rank0_only": "eval.split_across_ranks=false"}


def run_job(storage: Path, name: str, extra: list[str], steps: int) -> dict[str, float]:
    summary, client, wall = run_service_job(
        ["--config", "configs/fmnist_smoke.yaml", "training.epochs=1", f"training.max_steps_per_epoch={steps}",
         f"run.storage_path={storage}", f"run.name={name}", "tracking.experiment=eval-tail", *extra], name, REPO)
    metrics = client.get_run(summary["run_id"]).data.metrics
    return {"wall_s": wall, "knn_top1": summary["knn_top1"],
            **{k: v for k, v in metrics.items() if k.startswith("time/")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as storage:
        print("[bench] warm-up job (fills the baseline and numba caches)", file=sys.stderr, flush=True)
        run_job(Path(storage), "warm-up", [VARIANTS["split"]], args.steps)
        for index in range(args.repeats):
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                print(f"[bench] {variant} #{index + 1}", file=sys.stderr, flush=True)
                results[variant].append(run_job(Path(storage), f"{variant}-{index}", [VARIANTS[variant]], args.steps))
    medians = {variant: {key: round(statistics.median(r[key] for r in runs if key in r), 1)
                         for key in sorted(set().union(*runs)) if all(key in r for r in runs)}
               for variant, runs in results.items()}
    emit({
        "benchmark": "eval_tail",
        "config": "configs/fmnist_smoke.yaml (demo: 2 DDP workers, bank 20,000, 10,000 queries, k 20 and 200, "
                  "baselines cached)",
        "steps": args.steps,
        "repeats": args.repeats,
        **{f"{variant}_median": values for variant, values in medians.items()},
        "tail_ratio_split_over_rank0_only": round(medians["split"]["time/tail_s"]
                                                  / medians["rank0_only"]["time/tail_s"], 3),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
