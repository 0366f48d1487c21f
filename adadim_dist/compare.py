"""python -m adadim_dist.compare --experiment NAME [--runs ID ...] --out DIR

Reads training runs from MLflow and writes: per-run trajectories of H(R), I(R;Z), α, β and effective ranks;
the information plane (final H(R) against final I(R;Z), coloured by accuracy); accuracy against every
hyper-parameter that varies across the runs; and a Markdown table. The plots and the table are logged as
artifacts of a comparison run in the same experiment, and the table is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .training.tracking import resolve_tracking_uri

TRAJECTORIES = [
    ("info/h_r", "H(R) [nats]"),
    ("info/mi_rz", "I(R;Z) [nats]"),
    ("adadim/alpha", "α"),
    ("adadim/beta", "β"),
    ("info/erank_r", "erank(R)"),
    ("info/erank_z", "erank(Z)"),
]


class CompareError(ValueError):
    pass


def load_runs(client, experiment: str, run_ids: list[str] | None, accuracy_key: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"--experiment: no MLflow experiment named {experiment!r}")
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except Exception:
                raise CompareError(f"--runs: no MLflow run {run_id}") from None
    else:
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        # Training runs only: sweep parents and earlier comparisons carry no AdaDim statistics.
        runs = [r for r in runs if "info/h_r" in r.data.metrics]
    if not runs:
        raise CompareError(f"--experiment: {experiment!r} has no training runs with AdaDim metrics")
    return sorted(runs, key=lambda r: r.info.start_time)


def varying_params(runs) -> list[str]:
    keys = set().union(*(r.data.params.keys() for r in runs))
    # sweep.* repeats the sampled config keys of a trial; paths and names differ by construction.
    ignore = ("run.name", "data.train_path", "data.test_path", "run.storage_path", "tracking.", "sweep.")
    return sorted(k for k in keys if not k.startswith(ignore) and len({r.data.params.get(k) for r in runs}) > 1)


def label(run) -> str:
    return run.info.run_name or run.info.run_id[:8]


def _as_number(value: str | None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def plot_trajectories(client, runs, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title) in zip(axes.flat, TRAJECTORIES):
        for run in runs:
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            if history:
                ax.plot([m.step for m in history], [m.value for m in history], label=label(run), lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("AdaDim trajectories over training")
    fig.tight_layout()
    path = out / "trajectories.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_information_plane(runs, accuracy_key: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    points = [(r.data.metrics.get("info/h_r"), r.data.metrics.get("info/mi_rz"), r.data.metrics.get(accuracy_key), r)
              for r in runs]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    colours = [p[2] if p[2] is not None else float("nan") for p in points]
    scatter = ax.scatter([p[0] for p in points], [p[1] for p in points], c=colours, cmap="viridis", s=70,
                         edgecolors="black")
    for h, mi, _, run in points:
        ax.annotate(label(run), (h, mi), fontsize=7, xytext=(4, 4), textcoords="offset points")
    fig.colorbar(scatter, ax=ax, label=accuracy_key)
    ax.set_xlabel("final H(R) [nats]")
    ax.set_ylabel("final I(R;Z) [nats]")
    ax.set_title("Information plane: where do the best runs sit?")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "information_plane.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_params(runs, params: list[str], accuracy_key: str, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for param in params:
        xs = [_as_number(r.data.params.get(param)) for r in runs]
        ys = [r.data.metrics.get(accuracy_key) for r in runs]
        pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and x is not None]
        if not pairs:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        if all(isinstance(x, float) for x, _ in pairs):
            ax.scatter([x for x, _ in pairs], [y for _, y in pairs], s=50)
        else:
            categories = sorted({str(x) for x, _ in pairs})
            ax.scatter([categories.index(str(x)) for x, _ in pairs], [y for _, y in pairs], s=50)
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(param)
        ax.set_ylabel(accuracy_key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"accuracy_vs_{param.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def summary_table(runs, params: list[str], accuracy_key: str) -> str:
    metric_columns = [("adadim/alpha", "α"), ("info/h_r", "H(R)"), ("info/mi_rz", "I(R;Z)"),
                      ("info/erank_z", "erank(Z)"), (accuracy_key, accuracy_key), ("probe/top1", "probe top-1")]
    header = ["run", "run id", "status", *params, *(name for _, name in metric_columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        values = [label(run), run.info.run_id[:8], run.info.status]
        values += [str(run.data.params.get(p, "")) for p in params]
        values += [f"{run.data.metrics[k]:.3f}" if k in run.data.metrics else "" for k, _ in metric_columns]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def compare(tracking_uri: str, experiment: str, run_ids: list[str] | None, out: Path,
            accuracy_key: str = "knn/top1_k20") -> tuple[str, list[Path], str]:
    import matplotlib

    matplotlib.use("Agg")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = load_runs(client, experiment, run_ids, accuracy_key)
    out.mkdir(parents=True, exist_ok=True)
    params = varying_params(runs)
    plots = [plot_trajectories(client, runs, out), plot_information_plane(runs, accuracy_key, out)]
    plots += plot_accuracy_vs_params(runs, params, accuracy_key, out)
    table = summary_table(runs, params, accuracy_key)
    (out / "summary.md").write_text(f"# Comparison of {len(runs)} runs in {experiment}\n\n{table}")

    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    comparison = client.create_run(experiment_id, run_name=f"compare-{len(runs)}-runs",
                                   tags={"adadim.kind": "comparison",
                                         "adadim.compared_runs": ",".join(r.info.run_id for r in runs)})
    client.log_artifacts(comparison.info.run_id, str(out), "comparison")
    client.set_terminated(comparison.info.run_id, "FINISHED")
    return table, plots, comparison.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adadim_dist.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--runs", nargs="*", help="run ids (default: every training run of the experiment)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the plots and summary.md")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --storage-path)")
    parser.add_argument("--storage-path", type=Path, default=Path("runs"))
    parser.add_argument("--metric", default="knn/top1_k20", help="accuracy metric to colour and rank by")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"adadim_dist: error: --storage-path: no MLflow store at {uri.removeprefix('sqlite:///')}",
              file=sys.stderr)
        return 2
    try:
        table, plots, comparison_id = compare(uri, args.experiment, args.runs, args.out, args.metric)
    except CompareError as err:
        print(f"adadim_dist: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {len(plots)} plots and summary.md to {args.out} (MLflow comparison run {comparison_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
