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


# ------------------------------------------------------------------------------------------ grouped (studies)
# Final kNN of each variant's seeds: means 72 and 81, sample standard deviations 2 and 1.5 (exact in binary).
STUDY_KNN = {"adadim": [70.0, 72.0, 74.0], "vicreg": [79.5, 81.0, 82.5], "ntxent": [90.0]}


@pytest.fixture()
def study_store(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("study", artifact_location=(tmp_path / "artifacts").as_uri())
    for variant, knns in STUDY_KNN.items():
        slope = {"adadim": 0.1, "vicreg": -0.1, "ntxent": 0.0}[variant]
        for seed, knn in enumerate(knns):
            run = client.create_run(experiment_id, run_name=f"study-{variant}-{seed}",
                                    tags={"study.variant": variant})
            metrics = []
            for step in (10, 20, 30):
                metrics += [Metric("info/h_r", 3.0 + slope * step / 10 + seed, 0, step),
                            Metric("info/mi_rz", 1.0 + step / 100, 0, step),
                            Metric("adadim/alpha", 0.01 * step + 0.1 * seed, 0, step),
                            Metric("adadim/beta", 0.02 * step, 0, step),
                            Metric("info/erank_r", 20.0, 0, step), Metric("info/erank_z", 10.0 + seed, 0, step)]
                if variant == "adadim":  # the gradient shares (runs from before they existed have none)
                    metrics += [Metric("objective/grad_share_dim", 0.6 - 0.01 * step, 0, step),
                                Metric("objective/grad_share_sample", 0.3 + 0.01 * step, 0, step),
                                Metric("objective/grad_share_mi", 0.1, 0, step)]
            metrics += [Metric("knn/top1_k20", knn, 0, 5), Metric("probe/top1", knn - 10, 0, 5)]
            params = [Param("study.variant", variant), Param("training.seed", str(seed)),
                      Param("study.seed", str(seed)),
                      Param("objective.mi_sign", "off" if variant == "vicreg" else "maximize"),
                      Param("objective.alpha.mode", "adaptive" if variant == "adadim" else "fixed"),
                      Param("objective.alpha.value", "1.0" if variant == "ntxent" else "0.0")]
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
    # A trial still running: listed as left out, not pooled into its variant's statistics.
    running = client.create_run(experiment_id, run_name="study-adadim-9", tags={"study.variant": "adadim"})
    client.log_batch(running.info.run_id, metrics=[Metric("info/h_r", 9.0, 0, 10), Metric("knn/top1_k20", 10.0, 0, 1)],
                     params=[Param("study.variant", "adadim"), Param("training.seed", "9")])
    return uri, client


def test_group_statistics_are_exact_mean_std_and_n(study_store, tmp_path):
    from mlflow.tracking import MlflowClient

    from adadim_dist.compare import group_runs, group_statistics, load_runs

    uri, _ = study_store
    runs = [r for r in load_runs(MlflowClient(tracking_uri=uri), "study", None, "knn/top1_k20")
            if r.info.status == "FINISHED"]
    groups = group_runs(runs, "variant")
    assert list(groups) == ["adadim", "vicreg", "ntxent"] and [len(g) for g in groups.values()] == [3, 3, 1]
    stats = group_statistics(groups)
    assert stats["adadim"]["knn/top1_k20"] == (72.0, 2.0, 3)
    assert stats["vicreg"]["knn/top1_k20"] == (81.0, 1.5, 3)
    mean, std, n = stats["ntxent"]["knn/top1_k20"]
    assert (mean, n) == (90.0, 1) and math.isnan(std)  # one seed: no spread
    assert stats["adadim"]["info/erank_z"] == (11.0, 1.0, 3)  # every final metric, not only the headline ones
    assert stats["adadim"]["adadim/alpha"][0] == pytest.approx(0.4)
    # By params: the same three groups, seeds pooled, whatever the variant is called.
    by_params = group_runs(runs, "params")
    assert sorted(len(g) for g in by_params.values()) == [1, 3, 3]
    assert all("seed" not in label for label in by_params)
    assert any("objective.mi_sign=off" in label for label in by_params)


def test_compare_grouped_writes_the_table_csv_and_figures(study_store, tmp_path):
    uri, client = study_store
    table, plots, comparison_id = compare(uri, "study", None, tmp_path / "out", group_by="variant")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == {"adadim", "vicreg", "ntxent"}
    assert "72.00 ± 2.00" in rows["adadim"] and "62.00 ± 2.00" in rows["adadim"]  # kNN, probe
    assert rows["adadim"].endswith("| 3 |") and rows["ntxent"].endswith("| 1 |")
    assert "90.00 ± –" in rows["ntxent"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Left out: 1 unfinished runs" in summary and "## Every run" in summary
    with (tmp_path / "out" / "group_metrics.csv").open() as handle:
        csv_rows = {(r["group"], r["metric"]): r for r in __import__("csv").DictReader(handle)}
    assert (float(csv_rows[("vicreg", "knn/top1_k20")]["mean"]), float(csv_rows[("vicreg", "knn/top1_k20")]["std"]),
            int(csv_rows[("vicreg", "knn/top1_k20")]["n"])) == (81.0, 1.5, 3)
    names = {p.name for p in plots}
    assert {"information_plane_paths.png", "group_trajectories.png", "grad_shares.png"} <= names
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    logged = {a.path for a in client.list_artifacts(comparison_id, "comparison")}
    assert {"comparison/groups.md", "comparison/group_metrics.csv", "comparison/information_plane_paths.png"} <= logged


def test_gradient_shares_are_plotted_only_for_groups_that_logged_them(study_store, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mlflow.tracking import MlflowClient

    from adadim_dist.compare import group_runs, load_runs, plot_gradient_shares

    uri, _ = study_store
    client = MlflowClient(tracking_uri=uri)
    runs = [r for r in load_runs(client, "study", None, "knn/top1_k20") if r.info.status == "FINISHED"]
    groups = group_runs(runs, "variant")
    path = plot_gradient_shares(client, groups, tmp_path)
    assert path is not None and path.stat().st_size > 5000
    assert plot_gradient_shares(client, {k: v for k, v in groups.items() if k != "adadim"}, tmp_path) is None


def test_mean_history_pools_seeds_step_by_step(study_store):
    from mlflow.tracking import MlflowClient

    from adadim_dist.compare import group_runs, load_runs, mean_history

    uri, _ = study_store
    client = MlflowClient(tracking_uri=uri)
    runs = [r for r in load_runs(client, "study", None, "knn/top1_k20") if r.info.status == "FINISHED"]
    adadim = group_runs(runs, "variant")["adadim"]
    steps, mean, std = mean_history(client, adadim, "info/h_r")
    assert steps == [10, 20, 30]
    assert mean == pytest.approx([4.1, 4.2, 4.3])  # 3 + 0.1·step/10 + mean seed (1)
    assert std == pytest.approx([1.0, 1.0, 1.0])


def test_group_by_errors(store, study_store, tmp_path, capsys):
    uri, _, _ = store  # runs without a study.variant
    with pytest.raises(Exception, match="^--group-by: no run has a study.variant param"):
        compare(uri, "cmp", None, tmp_path / "out", group_by="variant")
    study_uri, _ = study_store
    assert main(["--experiment", "study", "--out", str(tmp_path / "x"), "--tracking-uri", study_uri,
                 "--group-by", "variant"]) == 0
    assert "| adadim |" in capsys.readouterr().out


def test_changes_made_on_resume_are_recorded_and_shown_next_to_the_first_starts_params(tmp_path):
    """Params are immutable in MLflow and logged on the first start; each later start records what it
    changed as resume.N tags, and compare shows them in the run's row instead of misreporting the params."""
    from mlflow.entities import Metric

    from adadim_dist.config import load_config
    from adadim_dist.training.driver import open_tracking, record_resume, resolve_paths

    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job",
                                           "tracking.experiment=resumed"]))
    sink = open_tracking(cfg)
    sink.client.log_batch(sink.run_id, metrics=[Metric("info/h_r", 1.0, 0, 1), Metric("knn/top1_k20", 80.0, 0, 1)])
    record_resume(sink, cfg, [("optim.lr", 0.3, 0.1), ("training.epochs", 3, 5)])
    record_resume(sink, cfg, [])  # a plain resume: counted, nothing to show
    tags = sink.client.get_run(sink.run_id).data.tags
    assert tags["resume.count"] == "2" and tags["resume.2.changes"] == "none"
    assert tags["resume.1.changes"] == "optim.lr: 0.3 -> 0.1; training.epochs: 3 -> 5"
    assert sink.client.get_run(sink.run_id).data.params["optim.lr"] == "0.3"  # the first start's, as MLflow keeps it
    table, _, _ = compare(cfg.tracking.uri or f"sqlite:///{tmp_path / 'mlflow.db'}", "resumed", None, tmp_path / "out")
    header, _, row = table.splitlines()[:3]
    assert header.endswith("| changed on resume |")
    assert row.endswith("| resume 1 (from epoch 0): optim.lr: 0.3 -> 0.1; training.epochs: 3 -> 5 |")


def test_compare_overlays_the_final_spectra_of_the_runs(store, tmp_path):
    """Runs that logged spectrum/epoch_NNNN.json get their last one overlaid, for R and for Z."""
    import json

    uri, client, runs = store
    run_ids = list(runs)
    for index, run_id in enumerate(run_ids[:2]):
        for epoch in (1, 2):
            path = tmp_path / f"epoch_000{epoch}.json"
            path.write_text(json.dumps({"r": [10.0 / (i + 1) ** (epoch + index) for i in range(16)],
                                        "z": [5.0, 1.0, 1e-6]}))
            client.log_artifact(run_id, str(path), "spectrum")
    from adadim_dist.compare import final_spectra

    spectra = final_spectra(client, [client.get_run(r) for r in run_ids], uri)
    assert len(spectra) == 2  # the third run logged none
    assert [s["r"][1] for s in spectra.values()] == [10.0 / 2 ** 2, 10.0 / 2 ** 3]  # epoch 2, the last
    _, plots, _ = compare(uri, "cmp", None, tmp_path / "out")
    spectrum_plots = [p for p in plots if p.name.startswith("spectra_")]
    assert sorted(p.name for p in spectrum_plots) == ["spectra_r.png", "spectra_z.png"]
    assert all(p.stat().st_size > 5000 for p in spectrum_plots)


def test_paired_difference_is_the_paired_t_interval_and_test():
    """Closed form for differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027 → 2 ± 2.4841; t = 2√3 → p = 0.0742."""
    from adadim_dist.compare import paired_difference

    result = paired_difference([1.0, 2.0, 3.0])
    assert (result["n"], result["mean"], result["sd"]) == (3, 2.0, 1.0)
    assert result["ci_low"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert result["ci_high"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    assert result["p"] == pytest.approx(0.07418, abs=1e-4)
    assert paired_difference([0.5, 0.5])["p"] == 0.0 and paired_difference([0.0, 0.0])["p"] == 1.0
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_difference([1.0])


def test_holm_adjusts_for_every_comparison_in_step_down_order():
    from adadim_dist.compare import holm_adjust

    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
