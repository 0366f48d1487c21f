"""Paired-by-seed differences between a study's variants, from the per-run table that ``compare --group-by``
writes (``summary.md``, section "Every run"): mean difference, 95 % t-interval and paired t-test per pair of
variants and metric, p-values Holm-adjusted over every comparison made.

    python benchmarks/study_paired.py results/adadim-study/summary.md --pairs adadim:vicreg adadim:ntxent vicreg:ntxent
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adadim_dist.compare import holm_adjust, paired_difference

METRICS = {"knn/top1_k20": "kNN top-1", "probe top-1": "probe top-1"}


def read_runs(summary: Path) -> list[dict[str, str]]:
    """The rows of the "Every run" Markdown table."""
    text = summary.read_text()
    if "## Every run" not in text:
        raise SystemExit(f"{summary}: no 'Every run' table (written by compare --group-by)")
    lines = [line for line in text.split("## Every run", 1)[1].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def compare_pairs(runs: list[dict[str, str]], pairs: list[tuple[str, str]]) -> list[dict]:
    results = []
    for first, second in pairs:
        for metric in METRICS:
            by_seed = {(r["study.variant"], r["study.seed"]): float(r[metric]) for r in runs
                       if r.get("status") == "FINISHED"}
            seeds = sorted({s for v, s in by_seed if v == first} & {s for v, s in by_seed if v == second})
            if len(seeds) < 2:
                continue
            diffs = [by_seed[first, s] - by_seed[second, s] for s in seeds]
            results.append({"first": first, "second": second, "metric": metric, "seeds": seeds,
                            **paired_difference(diffs)})
    for result, adjusted in zip(results, holm_adjust([r["p"] for r in results])):
        result["p_holm"] = adjusted
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--pairs", nargs="+", required=True, help="first:second variant names")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs]
    results = compare_pairs(read_runs(args.summary), pairs)
    print(f"{len(results)} comparisons, paired by seed; p-values Holm-adjusted over all of them\n")
    print("| comparison | metric | n | mean difference | 95 % CI | p | p (Holm) |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['first']} − {r['second']} | {METRICS[r['metric']]} | {r['n']} | {r['mean']:+.2f} | "
              f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['p']:.3f} | {r['p_holm']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
