"""The demo (``configs/fmnist_smoke.yaml``, as ``scripts/demo.sh`` runs it) at an earlier commit and at this
checkout, side by side: kNN top-1, raw-pixel kNN and wall time of each, taking turns.

    python benchmarks/demo_before_after.py --before REF [--after REF] [--repeats 1]

Both read the same .beton files; each job starts its own local Ray instance and writes to a scratch storage
path. The demo is deterministic on one machine (same seed, same CPU), so a change that keeps behaviour gives
the same kNN figures; the wall times differ by the machine's noise.
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
    from _common import checkout_at, demo_data_overrides, emit, run_service_job
except ImportError:  # run as a module
    from benchmarks._common import checkout_at, demo_data_overrides, emit, run_service_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare against")
    parser.add_argument("--after", help="git ref of the code to compare (default: this checkout as it is)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (scratch / "after").mkdir()
        checkouts = {"before": stack.enter_context(checkout_at(REPO, args.before, scratch)),
                     "after": stack.enter_context(checkout_at(REPO, args.after, scratch / "after"))
                     if args.after else REPO}
        for index in range(args.repeats):
            for side in ("before", "after") if index % 2 == 0 else ("after", "before"):
                print(f"[bench] demo {side} #{index + 1}", file=sys.stderr, flush=True)
                summary, _, wall = run_service_job(
                    ["--config", "configs/fmnist_smoke.yaml", f"run.storage_path={scratch / side}",
                     f"run.name=demo-{index}", *demo_data_overrides(REPO)], side, checkouts[side])
                results[side].append({"wall_s": round(wall, 1), "knn_top1": summary["knn_top1"],
                                      "knn_top1_raw_pixels": summary.get("knn_top1_raw_pixels")})
    emit({"benchmark": "demo_before_after", "before": args.before, "after": args.after or "this checkout",
          "repeats": args.repeats, **results,
          "wall_ratio_after_to_before": round(statistics.median(r["wall_s"] for r in results["after"])
                                              / statistics.median(r["wall_s"] for r in results["before"]), 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
