"""The paper's three claims, measured on a finished (or partial) study's MLflow runs.

    python benchmarks/study_claims.py --experiment adadim-study [--tracking-uri URI] [--out DIR]

Reads every finished run with a ``study.variant`` param (as ``compare --group-by variant`` does) and the
per-step training statistics each run logged (H(R), I(R;Z), erank(R), uniformity of Z, every
``training.log_every`` steps). Writes ``claims.md`` and prints one JSON line. Definitions (fixed before the
study's results were read, so they cannot be tuned to them):

1. *Early* is the first 20 % of a run's logged steps, *late* the last 50 %; Δx is x at the window's last
   logged step minus x at its first. Claim 1 holds for a variant when, early, ΔH(R) > 0 and ΔI(R;Z) > 0 with
   erank(R) rising (decorrelation), and, late, ΔH(R) > 0 with the uniformity loss falling (more uniform Z)
   while I(R;Z) plateaus or falls: ΔI(R;Z)_late ≤ 0.25 · |ΔI(R;Z)_early|.
2. Claim 2 holds when the variant with the best mean kNN top-1 has a mean final H(R) and a mean final I(R;Z)
   strictly inside the range of the variants' means (neither the largest H(R) nor the smallest I(R;Z)).
3. Claim 3 holds when AdaDim's mean kNN exceeds both VICReg's and NT-Xent's.

Every comparison is *resolved* only when the intervals mean ± sample std (over seeds) do not overlap (for a
sign: do not contain 0); otherwise it is reported as not resolvable at this scale.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adadim_dist.compare import describe, group_runs, load_runs  # noqa: E402
from adadim_dist.training.tracking import resolve_tracking_uri  # noqa: E402

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

EARLY, LATE, PLATEAU = 0.2, 0.5, 0.25
SERIES = {"h": "info/h_r", "i": "info/mi_rz", "erank_r": "info/erank_r", "uniformity": "info/uniformity"}


def window_changes(history: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    """Δ of every series over the early and the late window of one run."""
    steps = sorted({step for points in history.values() for step, _ in points})
    if len(steps) < 4:
        return {}
    early_end = steps[max(1, int(math.ceil(EARLY * len(steps))) - 1)]
    late_start = steps[int(len(steps) * (1 - LATE))]
    changes = {}
    for name, points in history.items():
        values = dict(points)

        def at(step):
            return values.get(step, math.nan)

        changes[f"{name}_early"] = at(early_end) - at(steps[0])
        changes[f"{name}_late"] = at(steps[-1]) - at(late_start)
    return changes


def interval(stat: tuple[float, float, int]) -> tuple[float, float]:
    mean, std, _ = stat
    std = 0.0 if math.isnan(std) else std
    return mean - std, mean + std


def sign(stat: tuple[float, float, int]) -> int:
    """+1 / -1 when mean ± std excludes 0 (and n ≥ 2), else 0 (not resolvable)."""
    low, high = interval(stat)
    if stat[2] < 2:
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


def above(a: tuple[float, float, int], b: tuple[float, float, int]) -> int:
    """+1 when a is above b beyond the seed spread, -1 below, 0 overlapping."""
    if a[2] < 2 or b[2] < 2:
        return 0
    return 1 if interval(a)[0] > interval(b)[1] else -1 if interval(a)[1] < interval(b)[0] else 0


def fmt(stat: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:+.{digits}f} ± –"


WORDS = {1: "yes", -1: "no", 0: "not resolvable"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="adadim-study")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--storage-path", default="runs")
    parser.add_argument("--accuracy-key", default="knn/top1_k20")
    parser.add_argument("--out", type=Path, default=Path("reports/adadim-study"))
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(args.tracking_uri, Path(args.storage_path)))
    runs = [r for r in load_runs(client, args.experiment, None, args.accuracy_key)
            if r.info.status == "FINISHED" and args.accuracy_key in r.data.metrics]
    groups = group_runs(runs, "variant")
    rows, result = [], {"variants": {}}
    for variant, members in groups.items():
        per_run = []
        for run in members:
            history = {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                       for name, key in SERIES.items()}
            per_run.append(window_changes(history))
        keys = sorted(set().union(*per_run))
        stats = {key: describe([changes.get(key) for changes in per_run]) for key in keys}
        early_rise = min(sign(stats["h_early"]), sign(stats["i_early"]), sign(stats["erank_r_early"]))
        late_i_ok = [changes["i_late"] <= PLATEAU * abs(changes["i_early"]) for changes in per_run]
        late = min(sign(stats["h_late"]), -sign(stats["uniformity_late"]))
        holds = 1 if early_rise == 1 and late == 1 and all(late_i_ok) else (-1 if -1 in (early_rise, late)
                                                                            or not any(late_i_ok) else 0)
        result["variants"][variant] = {
            "n": len(members), "claim1": WORDS[holds],
            **{key: [stat[0], stat[1]] for key, stat in stats.items()},
            "knn": list(describe([r.data.metrics.get(args.accuracy_key) for r in members])[:2]),
            "final_h_r": list(describe([r.data.metrics.get("info/h_r") for r in members])[:2]),
            "final_mi_rz": list(describe([r.data.metrics.get("info/mi_rz") for r in members])[:2]),
        }
        rows.append(f"| {variant} | {len(members)} | {fmt(stats['h_early'])} | {fmt(stats['i_early'])} | "
                    f"{fmt(stats['erank_r_early'], 1)} | {fmt(stats['h_late'])} | {fmt(stats['i_late'])} | "
                    f"{fmt(stats['uniformity_late'])} | {WORDS[holds]} (I late ≤ {PLATEAU}·|I early| in "
                    f"{sum(late_i_ok)}/{len(late_i_ok)} seeds) |")

    finals = {v: {"knn": describe([r.data.metrics.get(args.accuracy_key) for r in m]),
                  "h": describe([r.data.metrics.get("info/h_r") for r in m]),
                  "i": describe([r.data.metrics.get("info/mi_rz") for r in m])} for v, m in groups.items()}
    best = max(finals, key=lambda v: finals[v]["knn"][0])
    runner_up = max((v for v in finals if v != best), key=lambda v: finals[v]["knn"][0], default=None)
    h_means = [f["h"][0] for f in finals.values()]
    i_means = [f["i"][0] for f in finals.values()]
    inside = min(h_means) < finals[best]["h"][0] < max(h_means) and min(i_means) < finals[best]["i"][0] < max(i_means)
    best_resolved = runner_up is not None and above(finals[best]["knn"], finals[runner_up]["knn"]) == 1
    claim2 = ("yes" if inside else "no") if best_resolved else "not resolvable"
    claim3 = {other: WORDS[above(finals["adadim"]["knn"], finals[other]["knn"])]
              for other in ("vicreg", "ntxent") if "adadim" in finals and other in finals}
    result.update(best_variant=best, runner_up=runner_up, best_resolved=best_resolved,
                  best_inside_range=inside, claim2=claim2, claim3_adadim_above=claim3)

    lines = [
        f"# The paper's claims on experiment `{args.experiment}` ({len(runs)} finished runs)", "",
        "Definitions: `benchmarks/study_claims.py` (committed after the seed-0 results of five variants; see "
        "RESULTS.md). Δ over the early window",
        f"(first {EARLY:.0%} of logged steps) and the late window (last {LATE:.0%}); mean ± std over seeds.", "",
        "## Claim 1: early H(R) and I(R;Z) rise together (with erank(R)); late H(R) rises with uniformity while "
        "I(R;Z) plateaus or falls", "",
        "| variant | n | ΔH(R) early | ΔI(R;Z) early | Δerank(R) early | ΔH(R) late | ΔI(R;Z) late | "
        "Δuniformity late | holds? |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        "## Claim 2: the best models sit at an intermediate H(R), I(R;Z)", "",
        "| variant | kNN top-1 | final H(R) | final I(R;Z) |", "|---|---|---|---|",
        *[f"| {v} | {fmt(f['knn'], 2)} | {fmt(f['h'])} | {fmt(f['i'])} |"
          for v, f in sorted(finals.items(), key=lambda item: -item[1]["knn"][0])], "",
        f"Best mean kNN: `{best}` (runner-up `{runner_up}`; best beyond the seed spread: {best_resolved}); its H(R) "
        f"and I(R;Z) strictly inside the variants' range: {inside}. Verdict: **{claim2}**.", "",
        "## Claim 3: AdaDim above both of its parts", "",
        *[f"- AdaDim above `{other}` beyond the seed spread: **{verdict}** ({fmt(finals['adadim']['knn'], 2)} vs "
          f"{fmt(finals[other]['knn'], 2)})" for other, verdict in claim3.items()], "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claims.md").write_text("\n".join(lines))
    print("\n".join(lines))
    emit({"benchmark": "study_claims", "experiment": args.experiment, "runs": len(runs), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
