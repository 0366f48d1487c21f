"""The comparison report over a real (sqlite) MLflow store holding runs shaped like training runs."""

from __future__ import annotations

import math

import pytest

from adadim_dist.compare import compare, main


@pytest.fixture()
def store(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("cmp", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = {}
    for i, (gamma, sign) in enumerate([(0.1, "maximize"), (1.0, "minimize"), (10.0, "off")]):
        run = client.create_run(experiment_id, run_name=f"trial-{i}")
        metrics = []
        for step in range(1, 6):
            metrics += [Metric("info/h_r", 2.0 + i * 0.1 * step, 0, step), Metric("info/mi_rz", 1.0 + 0.05 * i * step, 0, step),
                        Metric("adadim/alpha", 0.1 * step, 0, step), Metric("adadim/beta", gamma * 0.1 * step, 0, step),
                        Metric("info/erank_r", 10 + step, 0, step), Metric("info/erank_z", 5 + step, 0, step)]
        metrics.append(Metric("knn/top1_k20", 70.0 + 5 * i, 0, 2))
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("objective.gamma", str(gamma)), Param("objective.mi_sign", sign),
                                 Param("training.epochs", "2")])
        client.set_terminated(run.info.run_id, "FINISHED")
        runs[run.info.run_id] = 70.0 + 5 * i
    sweep = client.create_run(experiment_id, run_name="sweep-parent")  # no AdaDim metrics: not compared
    client.set_terminated(sweep.info.run_id, "FINISHED")
    return uri, client, runs


def test_compare_writes_plots_and_a_table_matching_the_runs(store, tmp_path):
    uri, client, runs = store
    table, plots, comparison_id = compare(uri, "cmp", None, tmp_path / "out")
    assert {p.name for p in plots} >= {"trajectories.png", "information_plane.png",
                                       "accuracy_vs_objective.gamma.png", "accuracy_vs_objective.mi_sign.png"}
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == len(runs)  # the sweep parent has no AdaDim metrics and is left out
    for run_id, accuracy in runs.items():
        row = next(r for r in rows if run_id[:8] in r)
        assert f"{accuracy:.3f}" in row
    assert "training.epochs" not in table.splitlines()[0]  # the same in every run: not a column
    comparison = client.get_run(comparison_id)
    assert comparison.data.tags["adadim.kind"] == "comparison" and comparison.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(comparison_id, "comparison")}
    assert "comparison/information_plane.png" in logged and "comparison/summary.md" in logged
    # A second comparison does not compare the first one.
    table_again, _, _ = compare(uri, "cmp", None, tmp_path / "out2")
    assert len([l for l in table_again.splitlines()[2:] if l.startswith("|")]) == len(runs)


def test_compare_selected_runs_and_errors(store, tmp_path, capsys):
    uri, _, runs = store
    chosen = list(runs)[:2]
    table, _, _ = compare(uri, "cmp", chosen, tmp_path / "out")
    assert len([l for l in table.splitlines()[2:] if l.startswith("|")]) == 2
    assert main(["--experiment", "nope", "--out", str(tmp_path / "x"), "--tracking-uri", uri]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err
    assert main(["--experiment", "cmp", "--out", str(tmp_path / "x"), "--storage-path", str(tmp_path / "none")]) == 2
