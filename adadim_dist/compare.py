"""python -m adadim_dist.compare --experiment NAME [--runs ID ...] [--group-by variant|params] --out DIR

Reads training runs from MLflow and writes: per-run trajectories of H(R), I(R;Z), α, β and effective ranks;
the information plane (final H(R) against final I(R;Z), coloured by accuracy); accuracy against every
hyper-parameter that varies across the runs; and a Markdown table. The plots and the table are logged as
artifacts of a comparison run in the same experiment, and the table is printed.

With ``--group-by`` the finished runs are pooled into groups — ``variant``: a study's ``study.variant``
param; ``params``: the params that differ between runs, seeds excepted — and it also writes each group's
mean ± standard deviation and n of every final metric (``groups.md``, ``group_metrics.csv``), each group's
mean path in the (H(R), I(R;Z)) plane over training (``information_plane_paths.png``), and α, β and erank(Z)
against steps per group (``group_trajectories.png``).

Each term's share of the gradient that reaches Z (``objective/grad_share_*``) is plotted against steps, one
panel per group, or per run without ``--group-by`` (``grad_shares.png``).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

from .evaluation.spectra import plot_spectra
from .training.tracking import resolve_tracking_uri

TRAJECTORIES = [
    ("info/h_r", "H(R) [nats]"),
    ("info/mi_rz", "I(R;Z) [nats]"),
    ("adadim/alpha", "α"),
    ("adadim/beta", "β"),
    ("info/erank_r", "erank(R)"),
    ("info/erank_z", "erank(Z)"),
]


GROUP_BY = ("variant", "params")
VARIANT_PARAM = "study.variant"
# Params that name a seed: pooled over when grouping by params.
SEED_PARAMS = ("training.seed", "study.seed", "sweep.training.seed")
# The paper's picture: where each group's runs travel in the information plane, and what drives α.
GROUP_TRAJECTORIES = [("adadim/alpha", "α"), ("adadim/beta", "β"), ("info/erank_z", "erank(Z)")]
# What the mix does: each weighted term's share of the gradient norm with respect to Z.
GRADIENT_SHARES = [("objective/grad_share_dim", "L_dim"), ("objective/grad_share_sample", "L_sample"),
                   ("objective/grad_share_mi", "I(R;Z)")]


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


def save_figure(fig, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label(run) -> str:
    return run.info.run_name or run.info.run_id[:8]


def _as_number(value: str | None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def final_spectra(client, runs, tracking_uri: str) -> dict[str, dict[str, list[float]]]:
    """Each run's spectra at its last evaluation (artifact ``spectrum/epoch_NNNN.json``), by run label."""
    import json

    from mlflow.artifacts import download_artifacts

    found = {}
    for run in runs:
        try:
            files = sorted(a.path for a in client.list_artifacts(run.info.run_id, "spectrum") if a.path.endswith(".json"))
            if files:
                local = download_artifacts(run_id=run.info.run_id, artifact_path=files[-1],
                                           tracking_uri=tracking_uri)
                found[label(run)] = json.loads(Path(local).read_text())
        except Exception:  # noqa: BLE001 - a run without spectra (older runs) is simply not overlaid
            continue
    return found


def plot_final_spectra(client, runs, out: Path, tracking_uri: str) -> list[Path]:
    spectra = final_spectra(client, runs, tracking_uri)
    if not spectra:
        return []
    return [plot_spectra({name: s[key] for name, s in spectra.items() if key in s}, out / f"spectra_{key}.png",
                         f"final spectrum of {key.upper()} (held-out test embeddings), per run")
            for key in ("r", "z")]


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
    return save_figure(fig, "AdaDim trajectories over training", out / "trajectories.png")


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
    # Params are the first start's; a resume that changed a key says so here rather than be misreported.
    show_resumes = any(resume_changes(run) for run in runs)
    header = ["run", "run id", "status", *params, *(name for _, name in metric_columns)]
    header += ["changed on resume"] if show_resumes else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        values = [label(run), run.info.run_id[:8], run.info.status]
        values += [str(run.data.params.get(p, "")) for p in params]
        values += [f"{run.data.metrics[k]:.3f}" if k in run.data.metrics else "" for k, _ in metric_columns]
        values += ["<br>".join(resume_changes(run)).replace("|", "\\|")] if show_resumes else []
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def resume_changes(run) -> list[str]:
    """``resume N (from epoch E): key: old -> new; ...`` for every resume of ``run`` that changed its config
    (the ``resume.N.*`` tags the driver writes)."""
    tags = run.data.tags
    described = []
    for number in range(1, int(tags.get("resume.count", "0") or 0) + 1):
        changes = tags.get(f"resume.{number}.changes", "none")
        if changes != "none":
            described.append(f"resume {number} (from epoch {tags.get(f'resume.{number}.from_epoch', '?')}): {changes}")
    return described


# ------------------------------------------------------------------------------------------------ grouping
def group_runs(runs, group_by: str) -> dict[str, list]:
    """Runs → {group label: runs}, groups in order of their first run. ``variant``: the ``study.variant``
    param (or tag); ``params``: every varying param except seeds, as ``key=value, ...``."""
    if group_by not in GROUP_BY:
        raise CompareError(f"--group-by: must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if group_by == "variant":
        def key_of(run):
            return run.data.params.get(VARIANT_PARAM) or run.data.tags.get(VARIANT_PARAM)
        if all(key_of(run) is None for run in runs):
            raise CompareError(f"--group-by: no run has a {VARIANT_PARAM} param (runs of a study have it; "
                               "use --group-by params for other runs)")
    else:
        keys = [k for k in varying_params(runs) if k not in SEED_PARAMS and k != VARIANT_PARAM]

        def key_of(run):
            return ", ".join(f"{k}={run.data.params.get(k, '')}" for k in keys) or "all runs"
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(key_of(run) or "(no variant)", []).append(run)
    return groups


def describe(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of finite values; the deviation is NaN below two values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def group_statistics(groups: dict[str, list]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Every final metric of every group: {group: {metric: (mean, std, n)}}; n counts the runs that have it."""
    stats = {}
    for name, runs in groups.items():
        keys = sorted(set().union(*(r.data.metrics.keys() for r in runs)))
        stats[name] = {k: describe([r.data.metrics.get(k) for r in runs]) for k in keys}
    return stats


def paired_difference(differences: list[float]) -> dict[str, float]:
    """Mean of paired differences (e.g. arm A − arm B per seed), its sample standard deviation, the 95 %
    t-interval of the mean and the two-sided paired t-test's p-value (H0: mean 0). Needs n >= 2."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        raise ValueError(f"paired_difference: needs at least 2 pairs, got {n}")
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if sd > 0:
        p = float(stats.ttest_1samp(differences, 0.0).pvalue)
    else:  # identical differences: certain unless they are all 0
        p = 1.0 if mean == 0 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "p": p}


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for the number of comparisons made (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def mean_and_std(stat: tuple[float, float, int] | None, digits: int) -> str:
    if stat is None or stat[2] == 0:
        return ""
    mean, std, _ = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f} ± –"


def group_table(stats: dict[str, dict[str, tuple[float, float, int]]], accuracy_key: str) -> str:
    """One row per group: mean ± std of the headline final metrics and n (runs in the group)."""
    columns = [(accuracy_key, accuracy_key, 2), ("probe/top1", "probe top-1", 2), ("adadim/alpha", "final α", 3),
               ("adadim/beta", "final β", 3), ("info/h_r", "H(R)", 3), ("info/mi_rz", "I(R;Z)", 3),
               ("info/erank_z", "erank(Z)", 1)]
    header = ["group", *(name for _, name, _ in columns), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in stats.items():
        n = max((stat[2] for stat in metrics.values()), default=0)
        cells = [mean_and_std(metrics.get(key), digits) for key, _, digits in columns]
        lines.append("| " + " | ".join([name, *cells, str(n)]) + " |")
    return "\n".join(lines) + "\n"


def write_group_metrics(stats: dict[str, dict[str, tuple[float, float, int]]], path: Path) -> Path:
    """Long form, every final metric: group, metric, mean, std, n."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "metric", "mean", "std", "n"])
        for name, metrics in stats.items():
            for key, (mean, std, n) in metrics.items():
                writer.writerow([name, key, repr(mean), repr(std), n])
    return path


def mean_history(client, runs, key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of a metric over runs, at the steps every run logged (a restarted worker logs some
    steps twice: the later value counts)."""
    per_run = []
    for run in runs:
        values = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                   key=lambda m: (m.step, m.timestamp))}
        if values:
            per_run.append(values)
    if not per_run:
        return [], [], []
    steps = sorted(set.intersection(*(set(v) for v in per_run)))
    described = [describe([v[s] for v in per_run]) for s in steps]
    return steps, [d[0] for d in described], [0.0 if math.isnan(d[1]) else d[1] for d in described]


def plot_information_plane_paths(client, groups: dict[str, list], out: Path) -> Path:
    """Each group's mean (H(R), I(R;Z)) over training, seeds pooled: a line from ○ (first logged step) to ★
    (last), arrows along it, its seeds' own paths faint behind."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.5))
    colours = plt.get_cmap("tab10")
    for index, (name, runs) in enumerate(groups.items()):
        colour = colours(index % 10)
        for run in runs:
            h_steps, h, _ = mean_history(client, [run], "info/h_r")
            mi_steps, mi, _ = mean_history(client, [run], "info/mi_rz")
            common = sorted(set(h_steps) & set(mi_steps))
            if common:
                ax.plot([h[h_steps.index(s)] for s in common], [mi[mi_steps.index(s)] for s in common],
                        color=colour, alpha=0.2, lw=0.8)
        h_steps, h, _ = mean_history(client, runs, "info/h_r")
        mi_steps, mi, _ = mean_history(client, runs, "info/mi_rz")
        common = sorted(set(h_steps) & set(mi_steps))
        if not common:
            continue
        xs, ys = [h[h_steps.index(s)] for s in common], [mi[mi_steps.index(s)] for s in common]
        ax.plot(xs, ys, color=colour, lw=1.8, label=f"{name} (n={len(runs)})")
        ax.plot(xs[0], ys[0], "o", color=colour, ms=7, mec="black")
        ax.plot(xs[-1], ys[-1], "*", color=colour, ms=14, mec="black")
        for i in _arrow_positions(len(xs)):
            ax.annotate("", xy=(xs[i + 1], ys[i + 1]), xytext=(xs[i], ys[i]),
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.5})
    ax.set_xlabel("H(R) [nats]")
    ax.set_ylabel("I(R;Z) [nats]")
    ax.set_title("Information plane over training (mean over seeds; ○ start, ★ end)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / "information_plane_paths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _arrow_positions(num_points: int, arrows: int = 6) -> list[int]:
    """Indices i of the segments (i → i+1) that get an arrowhead, spread along the path."""
    if num_points < 2:
        return []
    return sorted({round(k * (num_points - 2) / max(arrows - 1, 1)) for k in range(arrows)})


def plot_group_trajectories(client, groups: dict[str, list], out: Path) -> Path:
    """α, β and erank(Z) against steps: each group's mean over seeds, ± one standard deviation shaded."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUP_TRAJECTORIES), figsize=(6 * len(GROUP_TRAJECTORIES), 4.5))
    colours = plt.get_cmap("tab10")
    for ax, (key, title) in zip(axes, GROUP_TRAJECTORIES):
        for index, (name, runs) in enumerate(groups.items()):
            steps, mean, std = mean_history(client, runs, key)
            if not steps:
                continue
            colour = colours(index % 10)
            ax.plot(steps, mean, color=colour, lw=1.4, label=f"{name} (n={len(runs)})")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colour, alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return save_figure(fig, "α, β and erank(Z) over training (mean ± std over seeds)",
                       out / "group_trajectories.png")


def plot_gradient_shares(client, groups: dict[str, list], out: Path) -> Path | None:
    """Per group, each term's share of the gradient reaching Z against steps (mean ± std over its runs).
    None when no run logged the shares (runs from before they existed)."""
    import matplotlib.pyplot as plt

    histories = {name: [(label_, *mean_history(client, runs, key)) for key, label_ in GRADIENT_SHARES]
                 for name, runs in groups.items()}
    histories = {name: curves for name, curves in histories.items() if any(c[1] for c in curves)}
    if not histories:
        return None
    columns = min(len(histories), 4)
    rows = math.ceil(len(histories) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, (name, curves) in zip(axes.flat, histories.items()):
        for index, (term, steps, mean, std) in enumerate(curves):
            if not steps:
                continue
            ax.plot(steps, mean, color=colours(index), lw=1.4, label=term)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colours(index), alpha=0.2, lw=0)
        ax.set_title(f"{name} (n={len(groups[name])})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    axes[0][0].set_ylabel("share of ‖∂L/∂Z‖")
    axes[0][0].legend(fontsize=7, loc="best")
    return save_figure(fig, "Each term's share of the gradient reaching Z (mean ± std over seeds)",
                       out / "grad_shares.png")


def compare(tracking_uri: str, experiment: str, run_ids: list[str] | None, out: Path,
            accuracy_key: str = "knn/top1_k20", group_by: str | None = None) -> tuple[str, list[Path], str]:
    import matplotlib

    matplotlib.use("Agg")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = load_runs(client, experiment, run_ids, accuracy_key)
    out.mkdir(parents=True, exist_ok=True)
    params = varying_params(runs)
    plots = [plot_trajectories(client, runs, out), plot_information_plane(runs, accuracy_key, out)]
    plots += plot_accuracy_vs_params(runs, params, accuracy_key, out)
    plots += plot_final_spectra(client, runs, out, tracking_uri)
    table = summary_table(runs, params, accuracy_key)
    report = f"# Comparison of {len(runs)} runs in {experiment}\n\n{table}"
    if group_by is not None:
        # Unfinished runs would pull the means towards early training; they are listed, not pooled.
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if not finished:
            raise CompareError(f"--group-by: none of the {len(runs)} runs has finished")
        groups = group_runs(finished, group_by)
        stats = group_statistics(groups)
        grouped = group_table(stats, accuracy_key)
        left_out = len(runs) - len(finished)
        report = (f"# {len(finished)} finished runs of {experiment} in {len(groups)} groups (by {group_by})\n\n"
                  f"Mean ± sample standard deviation over the runs of each group (final values); n = runs."
                  f"{f' Left out: {left_out} unfinished runs.' if left_out else ''}\n\n{grouped}\n"
                  f"## Every run\n\n{table}")
        (out / "groups.md").write_text(grouped)
        write_group_metrics(stats, out / "group_metrics.csv")
        plots += [plot_information_plane_paths(client, groups, out), plot_group_trajectories(client, groups, out)]
        table = grouped
    else:
        groups = {label(run): [run] for run in runs}
    shares = plot_gradient_shares(client, groups, out)
    plots += [shares] if shares is not None else []
    (out / "summary.md").write_text(report)

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
    parser.add_argument("--group-by", choices=GROUP_BY,
                        help="pool finished runs by study variant, or by the params that differ (seeds pooled)")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"adadim_dist: error: --storage-path: no MLflow store at {uri.removeprefix('sqlite:///')}",
              file=sys.stderr)
        return 2
    try:
        table, plots, comparison_id = compare(uri, args.experiment, args.runs, args.out, args.metric, args.group_by)
    except CompareError as err:
        print(f"adadim_dist: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {len(plots)} plots and summary.md to {args.out} (MLflow comparison run {comparison_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
