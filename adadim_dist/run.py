"""python -m adadim_dist.run --config configs/fmnist_smoke.yaml [--fresh] [section.key=value ...]

Trains on a local Ray instance, or on the cluster named by RAY_ADDRESS / run.ray_address, and ends by
printing one line of JSON (run_id, experiment, epochs, knn_top1, probe_top1, final_alpha, checkpoint, ...).
Exit codes: 0 success, 2 user error (bad config, missing data, tracking store unreachable), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m adadim_dist.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (defaults are embedded; see configs/)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming run.name")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.epochs=5")
    return parser.parse_intermixed_args(argv)  # options may follow the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[adadim] %(message)s")
    from .data.sources import DataError
    from .training.checkpoint import CheckpointError
    from .training.driver import TrackingUnavailableError, failure_reason, fit

    # Errors meant for the user: one line, exit 2. Anything else is a bug and keeps its traceback (exit 1).
    user_errors = (ConfigError, DataError, CheckpointError, FileNotFoundError, TrackingUnavailableError)

    try:
        cfg = load_config(args.config, args.overrides)
        summary = fit(cfg, fresh=args.fresh)
    except user_errors as err:
        print(f"adadim_dist: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a failed training job: the traceback is above, in the workers' output
        if type(err).__module__.startswith("ray."):
            print(f"adadim_dist: error: training failed: {failure_reason(err)}", file=sys.stderr)
            return 1
        raise
    print_where_to_look(summary)
    print(json.dumps(summary), flush=True)
    return 0


def print_where_to_look(summary: dict) -> None:
    lines = ["", "=== adadim_dist run finished ==="]
    k = summary["knn_k"]
    for label, key in (
        (f"kNN top-1 (k={k}), trained encoder", "knn_top1"),
        (f"kNN top-1 (k={k}), random encoder ", "knn_top1_random_encoder"),
        (f"kNN top-1 (k={k}), raw pixels     ", "knn_top1_raw_pixels"),
        ("online linear probe top-1" + " " * len(str(k)) + "        ", "probe_top1"),
    ):
        if summary.get(key) is not None:
            lines.append(f"{label}: {summary[key]:.2f}%")
    if summary.get("evaluation"):
        lines.append(f"evaluation: {summary['evaluation']}")
        lines += [f"  {name:<10}: {summary[key]:.3f}" for name, key in
                  (("RankMe", "eval_rankme"), ("H(R)", "eval_h_r"), ("I(R;Z)", "eval_mi_rz"),
                   ("uniformity", "eval_uniformity")) if summary.get(key) is not None]
    if summary.get("tracking"):
        lines.append(f"tracking: {summary['tracking']}")
    lines.append(f"checkpoint: {summary['checkpoint']}")
    uri = summary["tracking_uri"]
    if not uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then")
    if summary.get("run_page"):
        lines.append(f"this run:   {summary['run_page']}")  # metrics and charts one click away
    elif uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI:  {uri}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
