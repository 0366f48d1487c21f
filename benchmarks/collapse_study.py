"""Dimensional collapse and data imbalance on Fashion-MNIST, run and reported by the service (issue 16).

    python benchmarks/collapse_study.py run       # the four studies below, one after another (resumable)
    python benchmarks/collapse_study.py run --tail   # the imbalance × weight decay studies (issue 31)
    python benchmarks/collapse_study.py report    # tables + figures → results/collapse-study/, one JSON line
    python benchmarks/collapse_study.py report --tail --tracking-uri URI   # only the tail-class tables
    python benchmarks/collapse_study.py classes --tracking-uri URI   # each tail run's per-class kNN on R and Z
    python benchmarks/collapse_study.py run --grid-seeds      # the collapse grid again, seeds 0 and 1 (issue 31)
    python benchmarks/collapse_study.py report --grid-seeds --tracking-uri URI   # its per-seed table

``run`` calls ``python -m adadim_dist.tune --config F`` for each study file, so each is a normal Ray Tune
study: running it again resumes it (finished trials are kept). ``report`` reads the finished MLflow runs:

* collapse grid (experiment ``collapse-study``; ``configs/study/collapse_fmnist_{weak,strong}.yaml``):
  VICReg, NT-Xent and AdaDim × weight decay {1e-5, 1e-3, 1e-1} × weak / strong views, one seed. Per run: kNN
  top-1 and the collapsed dimensions of R (512) and Z (512) on the 10,000 test embeddings (singular values
  below 1e-3 of the largest, ``adadim_dist.objectives.spectrum``), plus the effective rank of Z at the end
  of training (``info/erank_z``, on the training batch);
* imbalance (experiment ``longtail-study``; ``configs/study/longtail_fmnist.yaml`` and its balanced control
  ``longtail_balanced_fmnist.yaml``): the three objectives × seeds 0, 1 on a long-tailed (ratio 10) and on a
  balanced training set of the same size; kNN on the balanced test set;
* imbalance × weight decay (experiment ``longtail-wd-study``; ``configs/study/longtail_wd_r{10,100}.yaml``):
  the three objectives × LARS weight decay {1e-4, 1e-2, 3e-1, 1, 10} × seeds 0, 1, trained long-tailed (ratio
  10 and 100), a balanced kNN bank; each class's kNN accuracy, head (classes 0-4) against tail (5-9). Its
  control (``longtail_wd_balanced.yaml``, ratio 1): the same on a balanced set of the ratio-10 set's size, at
  weight decay {1e-4, 3e-1, 10}, because the tail classes also differ from the head in difficulty.
* collapse grid, seeds (``--grid-seeds``, into the grid's experiment of a store of its own): the grid's two
  outer weight decays {1e-5, 1e-1} again with seeds 0 and 1, on one machine, because the grid's conclusions
  rest on one seed per cell (the middle decay, 1e-3, read the same as 1e-5 in every cell).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

STUDIES = [
    "configs/study/collapse_fmnist_weak.yaml",
    "configs/study/collapse_fmnist_strong.yaml",
    "configs/study/longtail_fmnist.yaml",
    "configs/study/longtail_balanced_fmnist.yaml",
]
# Each entry: a study file and the overrides of that file. The second pass of each ratio goes to the larger weight
# decays, up to where the head classes should collapse too (under LARS the decay competes with the gradient
# inside the trust ratio, so the decay that gets there is not known in advance).
LARGE_DECAYS = "search_space={optim.weight_decay: {type: grid, values: [1.0, 10.0]}}"
TAIL_STUDIES = [
    ("configs/study/longtail_wd_r10.yaml", []),
    ("configs/study/longtail_wd_r100.yaml", []),
    ("configs/study/longtail_wd_r100.yaml", ["name=longtail-wd-r100-large", LARGE_DECAYS]),
    ("configs/study/longtail_wd_r10.yaml", ["name=longtail-wd-r10-large", LARGE_DECAYS]),
    ("configs/study/longtail_wd_balanced.yaml", []),
]
# Logged to the grid's own experiment (collapse-study): run them against a tracking store of their own.
GRID_SEEDS = [(study, ["seeds=[0, 1]", "search_space={optim.weight_decay: {type: grid, values: [1.0e-5, 1.0e-1]}}"])
              for study in ("configs/study/collapse_fmnist_weak.yaml", "configs/study/collapse_fmnist_strong.yaml")]


def run_studies(studies: list[tuple[str, list[str]]]) -> int:
    failed = []
    for index, (study, overrides) in enumerate(studies, 1):
        command = [sys.executable, "-m", "adadim_dist.tune", "--config", study, *overrides]
        print(f"[{index}/{len(studies)}] {' '.join(command[1:])}", flush=True)
        code = subprocess.call(command, cwd=REPO)
        if code != 0:  # the next study still runs; running this script again resumes the failed one
            print(f"[{index}/{len(studies)}] {study}: exit {code}", flush=True)
            failed.append(study)
    print("done" if not failed else f"failed: {', '.join(failed)} (run again to resume)", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report", "classes"])
    parser.add_argument("--tail", action="store_true",
                        help="the imbalance × weight decay studies instead (run), or only their tables (report)")
    parser.add_argument("--grid-seeds", action="store_true",
                        help="the collapse grid with seeds 0 and 1 (run), or only its per-seed table (report)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--storage-path", default="runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "collapse-study")
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.grid_seeds:
            return run_studies(GRID_SEEDS)
        return run_studies(TAIL_STUDIES if args.tail else [(study, []) for study in STUDIES])
    if args.command == "classes":
        return projector_classes(args)
    return report(args)


OBJECTIVES = ["vicreg", "ntxent", "adadim"]
VIEWS = {"collapse-weak": "weak", "collapse-strong": "strong"}
ACCURACY = "knn/top1_k20"


def finished_runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
    return [r for r in runs if ACCURACY in r.data.metrics and r.data.params.get("study.variant")]


def collapse_rows(runs) -> list[dict]:
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        if params.get("study.name") not in VIEWS:
            continue
        rows.append({
            "views": VIEWS[params["study.name"]], "objective": params["study.variant"],
            "weight_decay": float(params["optim.weight_decay"]), "knn": metrics[ACCURACY],
            "collapsed_r": metrics.get("spectrum/collapsed_r"), "collapsed_z": metrics.get("spectrum/collapsed_z"),
            "erank_r": metrics.get("info/erank_r"), "erank_z": metrics.get("info/erank_z"),
            "seed": int(params.get("training.seed", 0)), "run": run,
        })
    return sorted(rows, key=lambda r: (r["views"] != "weak", OBJECTIVES.index(r["objective"]), r["weight_decay"],
                                       r["seed"]))


def collapse_table(rows: list[dict]) -> str:
    decays = sorted({r["weight_decay"] for r in rows})
    header = ["views", "objective", *(f"wd {d:g}: kNN · collapsed R · collapsed Z · erank Z" for d in decays)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for views in ("weak", "strong"):
        for objective in OBJECTIVES:
            cells = []
            for decay in decays:
                row = next((r for r in rows if (r["views"], r["objective"], r["weight_decay"])
                            == (views, objective, decay)), None)
                cells.append("–" if row is None else
                             f"{row['knn']:.2f} · {row['collapsed_r']:.0f} · {row['collapsed_z']:.0f} · "
                             f"{row['erank_z']:.0f}")
            lines.append("| " + " | ".join([views, objective, *cells]) + " |")
    return "\n".join(lines) + "\n"


def collapse_seed_table(rows: list[dict]) -> str:
    """One line per views × objective × weight decay: each seed's kNN and collapsed dimensions of R and Z, and
    the seeds' mean kNN."""
    lines = ["| views | objective | weight decay | kNN per seed | mean kNN | collapsed R per seed | "
             "collapsed Z per seed | erank Z per seed |", "|---|---|---|---|---|---|---|---|"]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["views"], r["objective"], r["weight_decay"]), []).append(r)
    for (views, objective, decay), group in cells.items():
        group.sort(key=lambda r: r["seed"])

        def per_seed(key: str, digits: int) -> str:
            return " / ".join(f"{r[key]:.{digits}f}" for r in group)

        mean_knn = sum(r["knn"] for r in group) / len(group)
        lines.append(f"| {views} | {objective} | {decay:g} | {per_seed('knn', 2)} | {mean_knn:.2f} | "
                     f"{per_seed('collapsed_r', 0)} | {per_seed('collapsed_z', 0)} | {per_seed('erank_z', 0)} |")
    return "\n".join(lines) + "\n"


def plot_collapse_spectra(client, rows: list[dict], tracking_uri: str, path: Path) -> Path | None:
    """Final test-set spectra of Z: one panel per views × objective, one curve per weight decay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adadim_dist.compare import final_spectra, label

    spectra = final_spectra(client, [r["run"] for r in rows], tracking_uri)
    if not spectra:
        return None
    fig, axes = plt.subplots(2, len(OBJECTIVES), figsize=(4 * len(OBJECTIVES), 6.5), sharex=True, sharey=True)
    for i, views in enumerate(("weak", "strong")):
        for j, objective in enumerate(OBJECTIVES):
            ax = axes[i, j]
            for row in (r for r in rows if r["views"] == views and r["objective"] == objective):
                values = spectra.get(label(row["run"]), {}).get("z")
                if values:
                    top = values[0] or 1.0
                    ax.semilogy([max(v / top, 1e-12) for v in values], lw=1.2,
                                label=f"wd {row['weight_decay']:g} (kNN {row['knn']:.1f})")
            ax.axhline(1e-3, color="grey", ls="--", lw=0.8)
            ax.set_title(f"{objective}, {views} views", fontsize=9)
            ax.set_ylim(1e-8, 2)
            if ax.get_lines()[:-1]:  # the threshold line has no label
                ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("index i (sorted)")
    for ax in axes[:, 0]:
        ax.set_ylabel("σ_i / σ_1 of Z (test set)")
    fig.suptitle("Final spectra of Z; dashed: collapse threshold 1e-3 · σ₁", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def longtail_table(runs) -> tuple[str, dict]:
    from adadim_dist.compare import describe

    groups: dict[tuple[str, str], list] = {}
    for run in runs:
        name = run.data.params.get("study.name")
        if name in ("longtail", "longtail-balanced"):
            groups.setdefault((run.data.params["study.variant"], name), []).append(run)
    header = ["objective", "balanced kNN", "long-tailed kNN", "drop (points)", "collapsed Z bal. / LT",
              "erank Z bal. / LT", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for objective in OBJECTIVES:
        balanced = groups.get((objective, "longtail-balanced"), [])
        longtail = groups.get((objective, "longtail"), [])
        if not balanced and not longtail:
            continue

        def stat(group, key):
            return describe([r.data.metrics.get(key) for r in group])

        bal, lt = stat(balanced, ACCURACY), stat(longtail, ACCURACY)
        pairs = {r.data.params.get("study.seed"): r.data.metrics[ACCURACY] for r in balanced}
        drops = [pairs[r.data.params.get("study.seed")] - r.data.metrics[ACCURACY] for r in longtail
                 if r.data.params.get("study.seed") in pairs]
        drop = describe(drops)
        summary[objective] = {"balanced": bal, "longtail": lt, "drop": drop}
        lines.append("| " + " | ".join([
            objective, _mean_std(bal), _mean_std(lt), _mean_std(drop),
            f"{_mean(stat(balanced, 'spectrum/collapsed_z'))} / {_mean(stat(longtail, 'spectrum/collapsed_z'))}",
            f"{_mean(stat(balanced, 'info/erank_z'))} / {_mean(stat(longtail, 'info/erank_z'))}",
            f"{bal[2]} / {lt[2]}",
        ]) + " |")
    return "\n".join(lines) + "\n", summary


HEAD, TAIL = range(0, 5), range(5, 10)  # Fashion-MNIST's long-tailed profile keeps most of class 0, least of 9


def imbalance_ratio(params: dict[str, str]) -> float:
    """A run's long-tail ratio from its MLflow params; 1 for the balanced control (no ratio)."""
    ratio = params.get("data.train_imbalance_ratio")
    return float(ratio) if ratio not in (None, "None") else 1.0


def tail_rows(runs) -> list[dict]:
    """Per (ratio, objective, weight decay): mean over seeds of the overall, head and tail kNN accuracy (each
    class's ``knn_class/top1_k20_c<c>``), and of each class's."""
    groups: dict[tuple, list] = {}
    for run in runs:
        key = (imbalance_ratio(run.data.params), run.data.params.get("study.variant"),
               float(run.data.params["optim.weight_decay"]))
        groups.setdefault(key, []).append(run)
    rows = []
    for (ratio, objective, decay), group in sorted(groups.items(), key=lambda item: item[0]):
        classes = [[r.data.metrics.get(f"knn_class/top1_k20_c{c}") for r in group] for c in range(10)]
        if any(v is None for per_class in classes for v in per_class):
            continue
        per_class = [sum(v) / len(v) for v in classes]
        tail_per_seed = [sum(classes[c][i] for c in TAIL) / len(TAIL) for i in range(len(group))]
        rows.append({"ratio": ratio, "objective": objective, "weight_decay": decay, "seeds": len(group),
                     "all": sum(r.data.metrics[ACCURACY] for r in group) / len(group),
                     "head": sum(per_class[c] for c in HEAD) / len(HEAD),
                     "tail": sum(per_class[c] for c in TAIL) / len(TAIL), "per_class": per_class,
                     "tail_per_seed": tail_per_seed,
                     "collapsed_r": sum(r.data.metrics.get("spectrum/collapsed_r", math.nan)
                                        for r in group) / len(group),
                     "collapsed_z": sum(r.data.metrics.get("spectrum/collapsed_z", math.nan)
                                        for r in group) / len(group)})
    return rows


def z_section(out: Path) -> str:
    """The per-class kNN on Z (``classes``), when it has been computed: its table and its change table."""
    import json

    path = out / "tail_z_classes.json"
    if not path.is_file():
        return ""
    rows = z_class_rows(json.loads(path.read_text()))
    for row in rows:
        row["weight_norms"] = f"{row['encoder_weight_norm']:.3g} · {row['projector_weight_norm']:.3g}"
    return ("\n## The projector output Z, embedded again from each run's final checkpoint\n\n"
            "`python benchmarks/collapse_study.py classes`: the same kNN (k = 20, balanced bank, test set) on Z; the "
            "last column compares R's kNN, recomputed the same way, with the run's logged value.\n\n"
            + tail_table(rows, ("R recomputed − logged (largest)", "r_matches_log", ".2f")) + "\n"
            + tail_change_table(tail_changes(rows))
            + "\nNorm of the decayed weights (mean over seeds): encoder (every convolution feeds a BatchNorm) · "
              "projector.\n\n"
            + tail_table(rows, ("weight norm: encoder · projector", "weight_norms", "")))


def tail_changes(rows: list[dict]) -> list[dict]:
    """Each row's head and tail change from the smallest weight decay of its (ratio, objective), and, for the
    long-tailed ratios, that change less the balanced control's (ratio 1) at the same weight decay: the part
    that class difficulty alone does not explain. The theory predicts a negative tail excess, growing with the
    ratio and the decay, before any head excess."""
    by_key = {(r["ratio"], r["objective"], r["weight_decay"]): r for r in rows}
    changes = []
    for r in rows:
        smallest = min(d for (ratio, objective, d) in by_key if (ratio, objective) == (r["ratio"], r["objective"]))
        if r["weight_decay"] == smallest:
            continue
        start = by_key[(r["ratio"], r["objective"], smallest)]
        change = {"ratio": r["ratio"], "objective": r["objective"], "weight_decay": r["weight_decay"],
                  "head": r["head"] - start["head"], "tail": r["tail"] - start["tail"],
                  "per_class": [a - b for a, b in zip(r["per_class"], start["per_class"])],
                  "collapsed_z": r.get("collapsed_z", math.nan)}
        control = by_key.get((1.0, r["objective"], r["weight_decay"]))
        control_start = by_key.get((1.0, r["objective"], smallest))
        if r["ratio"] != 1.0 and control and control_start:
            change["head_excess"] = change["head"] - (control["head"] - control_start["head"])
            change["tail_excess"] = change["tail"] - (control["tail"] - control_start["tail"])
        changes.append(change)
    return changes


def tail_change_table(changes: list[dict]) -> str:
    lines = ["| ratio | objective | weight decay | head change | tail change | head change − control's | "
             "tail change − control's | collapsed Z |", "|---|---|---|---|---|---|---|---|"]
    for c in changes:
        excess = [f"{c[k]:+.2f}" if k in c else "–" for k in ("head_excess", "tail_excess")]
        lines.append(f"| {c['ratio']:g} | {c['objective']} | {c['weight_decay']:g} | {c['head']:+.2f} | "
                     f"{c['tail']:+.2f} | {excess[0]} | {excess[1]} | "
                     f"{'–' if math.isnan(c['collapsed_z']) else format(c['collapsed_z'], '.0f')} |")
    return "\n".join(lines) + "\n"


def plot_tail_changes(changes: list[dict], path: Path) -> Path | None:
    """Each class's kNN change from the smallest to the largest weight decay, one panel per objective, one
    curve per ratio: the theory predicts the long-tailed curves to fall from the right (the rarest classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not changes:
        return None
    fig, axes = plt.subplots(1, len(OBJECTIVES), figsize=(4 * len(OBJECTIVES), 3.4), sharey=True)
    for ax, objective in zip(axes, OBJECTIVES):
        ours = [c for c in changes if c["objective"] == objective]
        for ratio in sorted({c["ratio"] for c in ours}):
            largest = max((c for c in ours if c["ratio"] == ratio), key=lambda c: c["weight_decay"])
            ax.plot(range(10), largest["per_class"], marker="o", lw=1.2,
                    label=f"ratio {ratio:g}, wd {largest['weight_decay']:g}" + (" (balanced)" if ratio == 1 else ""))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(objective, fontsize=9)
        ax.set_xlabel("class (frequency rank in the long-tailed sets)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("kNN change (points)")
    fig.suptitle("Per-class kNN change with weight decay; theory: long-tailed curves fall from the right", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def projector_classes(args) -> int:
    """Each finished imbalance × weight decay run's final checkpoint, embedded again: per-class kNN (k = 20, the
    run's balanced bank and test set) on R, which the run logged (a check: the two must agree), and on the
    projector output Z, where weight decay collapses dimensions (R keeps all but a few). The theory's class
    directions are directions of the trained map's output, so Z is where a tail-first collapse would show.
    Writes ``tail_z_classes.json``; ``report --tail`` adds its table."""
    import json

    import torch
    from mlflow.tracking import MlflowClient

    from adadim_dist.config import config_with_overrides
    from adadim_dist.data import build_eval_loader
    from adadim_dist.evaluation.features import collect_outputs
    from adadim_dist.evaluation.knn import knn_top1_across_ranks
    from adadim_dist.models import build_model
    from adadim_dist.training.checkpoint import checkpoint_model_state
    from adadim_dist.training.tracking import resolve_tracking_uri

    torch.set_num_threads(2)
    client = MlflowClient(resolve_tracking_uri(args.tracking_uri, Path(args.storage_path)))
    runs = finished_runs(client, "longtail-wd-study")
    out = args.out / "tail_z_classes.json"
    done = {r["run_id"]: r for r in json.loads(out.read_text())} if out.is_file() else {}
    loaders, device = {}, torch.device("cpu")
    for index, run in enumerate(runs, 1):
        if run.info.run_id in done:
            continue
        params = run.data.params
        run_dir = Path(params["run.storage_path"]) / params["run.name"]
        checkpoints = sorted(run_dir.glob("epoch_*"))
        if not checkpoints:
            print(f"[{index}/{len(runs)}] {params['run.name']}: no checkpoint in {run_dir}", flush=True)
            continue
        state, saved = checkpoint_model_state(checkpoints[-1])
        cfg = config_with_overrides(saved, [])
        model = build_model(cfg.model)
        model.load_state_dict(state)
        model.eval()
        embedded = {}
        for part, path, limit in (("bank", cfg.eval.bank_path, cfg.eval.bank_size), ("test", cfg.data.test_path, None)):
            key = (str(path), limit)
            if key not in loaders:  # one loader per file for every run: FFCV compiles each loader's pipeline once
                loaders[key] = build_eval_loader(cfg.data, path, 512, rank=0, world_size=1, distributed=False,
                                                 device=None, labels=True)
            with torch.no_grad():
                (r, z), labels = collect_outputs(model, loaders[key], device, (0, 1), torch.float32, limit)
            embedded[part] = (r, z, labels)
        row = {"run_id": run.info.run_id, "name": params["run.name"], "objective": params["study.variant"],
               "weight_decay": float(params["optim.weight_decay"]), "seed": int(params["training.seed"]),
               "ratio": imbalance_ratio(params)}
        for name, position in (("r", 0), ("z", 1)):
            bank, bank_labels = embedded["bank"][position], embedded["bank"][2]
            test, test_labels = embedded["test"][position], embedded["test"][2]
            top1, per_class = knn_top1_across_ranks(bank, bank_labels, test, test_labels, (20,), cfg.eval.knn_temperature,
                                                    cfg.model.num_classes, device, shared=False, per_class=True)
            row[f"knn_{name}"] = top1[20]
            row[f"per_class_{name}"] = [per_class[c] for c in range(cfg.model.num_classes)]
        row["logged_knn_r"] = run.data.metrics[ACCURACY]
        # Weight decay's other effect: the norms of the decayed weights (matrices and kernels; LARS exempts the
        # rest), of the encoder, whose every convolution feeds a BatchNorm (scale-free), and of the projector.
        for part in ("encoder", "projector"):
            row[f"{part}_weight_norm"] = math.sqrt(sum(float(v.double().pow(2).sum()) for k, v in state.items()
                                                       if k.startswith(f"{part}.") and v.ndim > 1))
        done[run.info.run_id] = row
        out.write_text(json.dumps(list(done.values()), indent=1) + "\n")  # each run as it comes: resumable
        print(f"[{index}/{len(runs)}] {row['name']}: kNN R {row['knn_r']:.2f} (logged {row['logged_knn_r']:.2f}), "
              f"Z {row['knn_z']:.2f}", flush=True)
    for loader in loaders.values():
        loader.close()
    emit({"runs": len(done), "out": str(out)})
    return 0


def z_class_rows(rows: list[dict]) -> list[dict]:
    """Per (ratio, objective, weight decay): mean over seeds of kNN on Z, all, head and tail classes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["ratio"], r["objective"], r["weight_decay"]), []).append(r)
    table = []
    for (ratio, objective, decay), group in sorted(groups.items()):
        per_class = [sum(r["per_class_z"][c] for r in group) / len(group) for c in range(10)]
        table.append({"ratio": ratio, "objective": objective, "weight_decay": decay, "seeds": len(group),
                      "all": sum(r["knn_z"] for r in group) / len(group),
                      "head": sum(per_class[c] for c in HEAD) / len(HEAD),
                      "tail": sum(per_class[c] for c in TAIL) / len(TAIL), "per_class": per_class,
                      "r_matches_log": max(abs(r["knn_r"] - r["logged_knn_r"]) for r in group),
                      "encoder_weight_norm": sum(r.get("encoder_weight_norm", math.nan) for r in group) / len(group),
                      "projector_weight_norm": sum(r.get("projector_weight_norm", math.nan) for r in group)
                      / len(group)})
    return table


def tail_table(rows: list[dict], last_column: tuple[str, str, str] = ("collapsed R", "collapsed_r", ".0f")) -> str:
    """One line per (ratio, objective, weight decay); ``last_column``: (title, key, format)."""
    title, key, spec = last_column
    lines = ["| ratio | objective | weight decay | seeds | kNN all | head (0-4) | tail (5-9) | per class 0 … 9 | "
             f"{title} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ratio']:g} | {r['objective']} | {r['weight_decay']:g} | {r['seeds']} | {r['all']:.2f} | "
                     f"{r['head']:.2f} | {r['tail']:.2f} | {' '.join(f'{v:.0f}' for v in r['per_class'])} | "
                     f"{format(r[key], spec)} |")
    return "\n".join(lines) + "\n"


def _mean(stat) -> str:
    return "–" if stat[2] == 0 else f"{stat[0]:.0f}"


def _mean_std(stat) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if not math.isnan(std) else f"{mean:.2f} ± –"


def report(args) -> int:
    import json

    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri, Path(args.storage_path))
    client = MlflowClient(tracking_uri)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tail:  # only the imbalance × weight decay study, e.g. while it runs from a worktree of its own
        tails = tail_rows(finished_runs(client, "longtail-wd-study"))
        (args.out / "tail_classes.json").write_text(json.dumps(tails, indent=1) + "\n")
        changes = tail_changes(tails)
        (args.out / "tail_report.md").write_text(
            "# Imbalance × weight decay (experiment longtail-wd-study)\n\n"
            f"{sum(r['seeds'] for r in tails)} finished runs; kNN top-1 on the balanced test set, mean over seeds. "
            "Ratio 1 is the balanced control.\n\n" + tail_table(tails) +
            "\n## Changes from the smallest weight decay, and beyond the balanced control\n\n" +
            tail_change_table(changes) + "\n![per-class changes](tail_changes.png)\n" + z_section(args.out))
        plot_tail_changes(changes, args.out / "tail_changes.png")
        emit({"tail_runs": sum(r["seeds"] for r in tails), "tracking_uri": tracking_uri})
        return 0
    rows = collapse_rows(finished_runs(client, "collapse-study"))
    if args.grid_seeds:  # only the grid's per-seed table, from the store the seeds ran into
        (args.out / "grid_seeds.md").write_text(
            "# Collapse grid, seeds 0 and 1 (experiment collapse-study)\n\n" + collapse_seed_table(rows))
        (args.out / "grid_seeds.json").write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "run"} for r in rows], indent=1) + "\n")
        emit({"grid_seed_runs": len(rows), "tracking_uri": tracking_uri})
        return 0
    longtail, summary = longtail_table(finished_runs(client, "longtail-study"))
    text = ["# Collapse grid (experiment collapse-study)", "",
            "Each cell: kNN top-1 (k = 20) · collapsed dimensions of R and of Z (each of 512; σ_i < 1e-3 σ_1 on "
            "the test set) · effective rank of Z (training batch, last logged step).", "", collapse_table(rows),
            "# Imbalance (experiment longtail-study)", "",
            "kNN top-1 on the balanced test set, mean ± std over seeds; drop = balanced − long-tailed, per seed.",
            "", longtail]
    tails = tail_rows(finished_runs(client, "longtail-wd-study"))
    if tails:
        text += ["# Imbalance × weight decay (experiment longtail-wd-study)", "",
                 "kNN top-1 (k = 20, balanced bank, balanced test set), mean over seeds: all classes, the five most "
                 "frequent (head), the five rarest (tail), each class; collapsed dimensions of R (of 512).", "",
                 tail_table(tails)]
        (args.out / "tail_classes.json").write_text(json.dumps(tails, indent=1) + "\n")
    (args.out / "report.md").write_text("\n".join(text))
    (args.out / "collapse_grid.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "run"} for r in rows], indent=1) + "\n")
    figure = plot_collapse_spectra(client, rows, tracking_uri, args.out / "spectra_z.png") if rows else None
    print("\n".join(text))
    emit({"collapse_runs": len(rows), "longtail_objectives": {k: {n: [round(x, 3) for x in v[:2]] + [v[2]]
                                                               for n, v in s.items()} for k, s in summary.items()},
          "figure": str(figure) if figure else None, "out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
