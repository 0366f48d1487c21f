"""The tuned comparison of issue 26: VICReg, NT-Xent and AdaDim, each tuned by the service's own Tune at an
equal budget, then each arm's best configuration trained with several seeds and tested, with paired statistics.

Stages (``--stages``, in this order; each skips what its committed result files already hold, so the same
command resumes a study after a stop, in this session or the next):

1. ``tune``: for each arm, ``python -m adadim_dist.tune --config configs/study/tuned/tune_<arm>.yaml`` (6 trials
   × the first 3 epochs of the final runs' 15-epoch schedule, FIFO, selected on validation kNN, the last 10,000 training images) → ``tuning_<arm>.json`` (the
   summary and every trial's parameters, validation kNN and CPU).
2. ``final``: for each seed, each arm's best configuration trained on all 60,000 training images for 15 epochs
   (one one-trial study per arm and seed, ``final_study_<arm>_s<seed>.yaml``), tested on the test set: kNN
   during training, then the offline linear evaluation (``python -m adadim_dist.evaluate``) of its checkpoint
   → one row per trial in ``final_trials.csv`` (with the CPU model). Seed-major: every arm of a seed runs on
   one machine, so a seed's arms pair within one CPU model; a seed is re-run whole on another model.
3. ``markers``: raw pixels, a random encoder and a supervised encoder of the same architecture and budget
   (cross-entropy on the same two augmented views, 15 epochs), same bank, test set and linear evaluation →
   ``markers.csv``.
4. ``verdict``: per arm mean ± std, paired-by-seed differences with 95 % t-intervals and Holm-adjusted paired
   t-tests (pairs only within one CPU model) → ``verdict.md``, ``verdict.json``.

    python benchmarks/tuned_study.py [--stages tune final markers verdict] [--seeds 0 1 2] [--out results/tuned-study]

Run it from a git worktree of a fixed commit (edits made meanwhile then do not change later trials), in the
background, with ``--out`` pointing at the main checkout's results folder; commit that folder as rows arrive.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

try:
    from _common import emit, machine
except ImportError:  # run as a module
    from benchmarks._common import emit, machine

REPO = Path(__file__).resolve().parents[1]
STUDY_DIR = REPO / "configs" / "study" / "tuned"
ARMS = ("vicreg", "ntxent", "adadim")
FINAL_EPOCHS = 15
FINAL_OVERRIDES = [
    "data.validation_size=null",
    "data.train_path=data/fashion_mnist_train.beton",
    "data.test_path=data/fashion_mnist_test.beton",
    f"training.epochs={FINAL_EPOCHS}",
    "training.stop_after_epochs=null",  # the whole schedule whose first 3 epochs the tuning trials trained
    f"eval.every_epochs={FINAL_EPOCHS}",
    "tracking.experiment=adadim-tuned-final",
]
FINAL_FIELDS = ["arm", "seed", "choice", "status", "cpu",
                "knn_top1", "linear_top1", "linear_top1_l2", "probe_top1", "final_alpha",
                "final_beta", "erank_z", "grad_share_dim", "grad_share_sample", "grad_share_mi", "run_id",
                "overrides", "commit"]
KNN_KEY = "knn/top1_k20"
#: What the worker's NonFiniteLossError says: a final run that diverged, not a broken one.
DIVERGED = "non-finite loss or gradient"


def log(message: str) -> None:
    print(f"[tuned-study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_sweep_file(path: Path, log_path: Path) -> dict:
    """``python -m adadim_dist.tune --config path`` (resumes by itself), output appended to ``log_path``;
    returns its summary (the last line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {path}\n")
        handle.flush()
        out = subprocess.run([sys.executable, "-m", "adadim_dist.tune", "--config", str(path)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=handle, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        handle.write(out.stdout)
    if out.returncode != 0:
        raise SystemExit(f"tuned_study: {path.name} failed ({out.returncode}); see {log_path}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def diverged_in(log_path: Path, since: int) -> str | None:
    """The worker's non-finite message in ``log_path`` after byte ``since`` (this attempt's output), or None."""
    with log_path.open("rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    found = [line for line in text.splitlines() if DIVERGED in line and "NonFiniteLossError" in line]
    return found[0].split("NonFiniteLossError: ", 1)[-1].strip() if found else None


def mlflow_client():
    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(None, str(REPO / "runs")))


def child_runs(client, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


# ------------------------------------------------------------------------------------------------ 1. tune
def tune_arm(arm: str, out: Path) -> dict:
    result_path = out / f"tuning_{arm}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    log(f"tuning {arm}")
    summary = run_sweep_file(STUDY_DIR / f"tune_{arm}.yaml", REPO / "runs" / "tuned-study-logs" / f"tune_{arm}.log")
    client = mlflow_client()
    trials = []
    for run in child_runs(client, summary["parent_run_id"]):
        trials.append({"run_name": run.info.run_name, "status": run.info.status,
                       "params": {k.removeprefix("sweep."): v for k, v in run.data.params.items()
                                  if k.startswith("sweep.")},
                       "val_knn_top1": run.data.metrics.get(KNN_KEY), "cpu": run.data.tags.get("machine.cpu")})
    trials.sort(key=lambda t: -(t["val_knn_top1"] or -1))
    result = {"arm": arm, "summary": summary, "trials": trials, "commit": git_commit(), "machine": machine()}
    result_path.write_text(json.dumps(result, indent=1))
    log(f"tuned {arm}: best validation kNN {summary['best_score']:.2f} with {summary['best_params']}")
    return result


# ----------------------------------------------------------------------------------------------- 2. final
def arm_overrides(arm: str, best_params: dict) -> list[str]:
    """The arm's fixed overrides (its tuning file's) followed by its tuned values."""
    from adadim_dist.sweep import overrides_from_params

    sweep_file = yaml.safe_load((STUDY_DIR / f"tune_{arm}.yaml").read_text())
    return [*sweep_file.get("overrides", []), *overrides_from_params(best_params)]


def final_name(arm: str, seed: int, choice: int) -> str:
    """The final run's study name; a fallback configuration (``choice`` > 0) gets its own."""
    return f"tuned-final-{arm}-s{seed}" if choice == 0 else f"tuned-final-{arm}-c{choice}-s{seed}"


def final_study_file(arm: str, seed: int, overrides: list[str], out: Path, choice: int = 0) -> Path:
    study = {
        "name": final_name(arm, seed, choice),
        "base_config": str(STUDY_DIR / "fmnist_base.yaml"),
        "overrides": FINAL_OVERRIDES,
        "variant_keys": ["objective.", "optim.lr"],
        "metric": "knn",
        "scheduler": {"name": "fifo"},
        "trial": {"num_workers": 2, "cpus_per_worker": 0.9, "trial_cpus": 0.1},
        "max_concurrent_trials": 1,
        "seeds": [seed],
        "variants": {arm: overrides},
    }
    path = out / "studies" / f"{final_name(arm, seed, choice).replace('tuned-final-', 'final_study_')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by benchmarks/tuned_study.py from tuning_{arm}.json.\n"
                    + yaml.safe_dump(study, sort_keys=False))
    return path


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def offline_evaluation(run_name: str) -> dict:
    """``python -m adadim_dist.evaluate`` on the trial's last checkpoint (kNN and linear evaluation on the
    test set, logged to the trial's MLflow run)."""
    checkpoints = sorted((REPO / "runs" / run_name).glob("epoch_*"))
    if not checkpoints:
        raise SystemExit(f"tuned_study: no checkpoint under runs/{run_name}")
    out = subprocess.run([sys.executable, "-m", "adadim_dist.evaluate", "--checkpoint", str(checkpoints[-1]),
                          "--out", str(REPO / "reports" / "evaluate" / run_name)],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"tuned_study: offline evaluation of {run_name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ranked_trials(tuned_arm: dict) -> list[dict]:
    """An arm's finished tuning trials, best validation kNN first: the configurations a final run may use."""
    trials = [t for t in tuned_arm["trials"] if t["status"] == "FINISHED" and t["val_knn_top1"] is not None]
    return sorted(trials, key=lambda t: -t["val_knn_top1"])


def choices(out: Path) -> dict[str, int]:
    """Which of each arm's ranked configurations its final runs use (``final_choices.json``; 0: the best)."""
    path = out / "final_choices.json"
    return json.loads(path.read_text()) if path.exists() else {}


def final_runs(tuned: dict[str, dict], seeds: list[int], out: Path) -> None:
    """Each arm's chosen configuration for each seed, seed-major. The rule, the same for every arm and fixed
    before any final result was read: an arm whose configuration diverges in the final schedule (a non-finite
    loss, which the 3-epoch tuning trials cannot always see) moves to its next-best tuning trial, for every
    seed; the diverged run stays in ``final_trials.csv`` with status ``diverged``."""
    from adadim_dist.training.tracking import cpu_model

    table = out / "final_trials.csv"
    cpu = cpu_model()
    while True:
        chosen = choices(out)
        pending = [(seed, arm) for seed in seeds for arm in ARMS
                   if not any(r["arm"] == arm and int(r["seed"]) == seed and r["cpu"] == cpu and r["status"] == "ok"
                              and int(r["choice"]) == chosen.get(arm, 0) for r in read_rows(table))]
        if not pending:
            return
        seed, arm = pending[0]
        choice = chosen.get(arm, 0)
        ranked = ranked_trials(tuned[arm])
        if choice >= len(ranked):
            log(f"{arm}: every tuned configuration diverged in the final schedule; no final run")
            return
        params = {k: yaml.safe_load(v) for k, v in ranked[choice]["params"].items()}
        overrides = arm_overrides(arm, params)
        log(f"final run {arm} seed {seed} (configuration {choice + 1} of {len(ranked)}, {cpu}): {' '.join(overrides)}")
        log_path = REPO / "runs" / "tuned-study-logs" / f"final_{arm}_c{choice}_s{seed}.log"
        since = log_path.stat().st_size if log_path.exists() else 0
        base_row = {"arm": arm, "seed": seed, "choice": choice, "cpu": cpu, "overrides": " ".join(overrides),
                    "commit": git_commit()}
        try:
            summary = run_sweep_file(final_study_file(arm, seed, overrides, out, choice), log_path)
        except SystemExit:
            message = diverged_in(log_path, since)
            if message is None:
                raise
            append_row(table, FINAL_FIELDS, {**base_row, "status": "diverged", "run_id": message})
            (out / "final_choices.json").write_text(json.dumps({**chosen, arm: choice + 1}, indent=1) + "\n")
            log(f"final {arm} seed {seed} diverged ({message}): {arm} moves to its configuration {choice + 2}")
            continue
        client = mlflow_client()
        (run,) = [r for r in child_runs(client, summary["parent_run_id"]) if r.info.status == "FINISHED"][-1:]
        offline = offline_evaluation(run.info.run_name)
        metrics = run.data.metrics
        row = {**base_row, "status": "ok", "cpu": run.data.tags.get("machine.cpu", cpu),
               "knn_top1": metrics.get(KNN_KEY), "linear_top1": offline["eval_offline/linear_top1_raw"],
               "linear_top1_l2": offline["eval_offline/linear_top1_l2"], "probe_top1": metrics.get("probe/top1"),
               "final_alpha": metrics.get("adadim/alpha"), "final_beta": metrics.get("adadim/beta"),
               "erank_z": metrics.get("info/erank_z"),
               **{f"grad_share_{t}": metrics.get(f"objective/grad_share_{t}") for t in ("dim", "sample", "mi")},
               "run_id": run.info.run_id}
        append_row(table, FINAL_FIELDS, row)
        log(f"final {arm} seed {seed}: kNN {row['knn_top1']:.2f}, linear {row['linear_top1']:.2f}")


# --------------------------------------------------------------------------------------------- 3. markers
def final_config():
    from adadim_dist.config import load_config

    return load_config(STUDY_DIR / "fmnist_base.yaml", FINAL_OVERRIDES)


class FirstChannelPixels:
    """Raw pixels as features: the evaluation pipeline's normalised image, one channel (the images are grey)."""

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, images):
        return images[:, 0].flatten(1)


def train_supervised(cfg, seed: int, device):
    """The encoder + a linear head trained with cross-entropy on both augmented views of every step: the same
    encoder, loader, batch, epochs and LARS schedule as an SSL run (the upper bound of this budget; its lr is
    the base config's, not tuned). One process using every core."""
    import torch

    from adadim_dist.data import build_ssl_loader
    from adadim_dist.models import build_model
    from adadim_dist.training.optim import build_optimizer, build_scheduler

    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    loader = build_ssl_loader(cfg.data, cfg.training.global_batch_size, rank=0, world_size=1, seed=seed,
                              distributed=False)
    steps = len(loader)
    # The SSL runs' optimizer and schedule (LARS at the base config's lr, warm-up, cosine); the classifier head
    # is the probe's parameter group.
    encoder_params = list(model.encoder.parameters())
    optimizer = build_optimizer(cfg.optim, cfg.training.global_batch_size, encoder_params,
                                list(model.probe.parameters()))
    scheduler = build_scheduler(optimizer, steps * cfg.training.epochs, int(cfg.optim.warmup_epochs * steps),
                                cfg.optim.min_lr_ratio)
    started = time.time()
    try:
        for epoch in range(cfg.training.epochs):
            model.train()
            for view_a, view_b, labels in loader:
                labels = labels.reshape(-1).long()
                images = torch.cat([view_a, view_b])
                logits = model.probe(model.encoder(images))  # the probe head as the classifier (not detached)
                loss = torch.nn.functional.cross_entropy(logits, torch.cat([labels, labels]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            log(f"supervised seed {seed}: epoch {epoch + 1}/{cfg.training.epochs}, loss {loss.item():.3f}, "
                f"{time.time() - started:.0f} s")
    finally:
        loader.close()
    return model.encoder.eval()


def markers(out: Path, seeds: list[int], cfg=None) -> None:
    import torch

    from adadim_dist.data import prepare_datasets
    from adadim_dist.evaluate import evaluate
    from adadim_dist.models import build_model

    table = out / "markers.csv"
    done = {(r["marker"], r["seed"]) for r in read_rows(table)}
    cfg = cfg or final_config()
    prepare_datasets(cfg.data)
    device = torch.device("cpu")
    fields = ["marker", "seed", "cpu", "knn_top1", "linear_top1", "linear_top1_l2", "commit"]
    todo = [("raw_pixels", 0)] + [("random_encoder", s) for s in seeds] + [("supervised", s) for s in seeds[:1]]
    from adadim_dist.training.tracking import cpu_model

    for marker, seed in todo:
        if (marker, str(seed)) in done:
            continue
        log(f"marker {marker} seed {seed}")
        if marker == "raw_pixels":
            encoder = FirstChannelPixels()
        elif marker == "random_encoder":
            torch.manual_seed(seed)
            encoder = build_model(cfg.model).encoder.eval()
        else:
            encoder = train_supervised(cfg, seed, device)
        results, _, _ = evaluate(encoder, cfg, device)
        append_row(table, fields, {"marker": marker, "seed": seed, "cpu": cpu_model(),
                                   "knn_top1": results["eval_offline/knn_top1_k20"],
                                   "linear_top1": results["eval_offline/linear_top1_raw"],
                                   "linear_top1_l2": results["eval_offline/linear_top1_l2"], "commit": git_commit()})


# --------------------------------------------------------------------------------------------- 4. verdict
def paired(rows: list[dict], first: str, second: str, metric: str) -> dict | None:
    """Paired-by-seed differences first − second, only over seeds where both ran on one CPU model."""
    from adadim_dist.compare import paired_difference

    by_key = {(r["arm"], r["seed"], r["cpu"]): float(r[metric]) for r in rows if r[metric] not in ("", None)}
    pairs = [(seed, cpu, value - by_key[(second, seed, cpu)]) for (arm, seed, cpu), value in by_key.items()
             if arm == first and (second, seed, cpu) in by_key]
    if len(pairs) < 2:
        return None
    return {"first": first, "second": second, "metric": metric, **paired_difference([d for _, _, d in pairs]),
            "seeds": sorted({s for s, _, _ in pairs}), "cpus": sorted({c for _, c, _ in pairs})}


def tuning_table(out: Path) -> list[str]:
    """Each arm's tuning: trials run, diverged or failed, the best validation kNN and its parameters."""
    lines = ["# Tuned comparison", "", "## Tuning (validation kNN, equal budget per arm)", "",
             "| arm | trials | scored | best validation kNN | best parameters | CPU |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        path = out / f"tuning_{arm}.json"
        if not path.exists():
            lines.append(f"| {arm} | – | – | (not run yet) | | |")
            continue
        tuned = json.loads(path.read_text())
        scored = [t for t in tuned["trials"] if t["val_knn_top1"] is not None]
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in tuned["summary"]["best_params"].items())
        cpus = ", ".join(sorted({t["cpu"] for t in tuned["trials"] if t["cpu"]}))
        lines.append(f"| {arm} | {len(tuned['trials'])} | {len(scored)} | {tuned['summary']['best_score']:.2f} | "
                     f"{params} | {cpus} |")
    return lines


def verdict(out: Path) -> None:
    all_rows = read_rows(out / "final_trials.csv")
    chosen = choices(out)
    rows = [r for r in all_rows if r["status"] == "ok" and int(r["choice"]) == chosen.get(r["arm"], 0)]
    lines = tuning_table(out)
    diverged = [r for r in all_rows if r["status"] == "diverged"]
    if diverged:
        lines += ["", "Final runs that diverged (the arm then moved to its next-best tuning trial, for every seed):",
                  "", "| arm | seed | configuration | overrides | where |", "|---|---|---|---|---|"]
        lines += [f"| {r['arm']} | {r['seed']} | {int(r['choice']) + 1} | `{r['overrides']}` | {r['run_id']} |"
                  for r in diverged]
    if not rows:
        (out / "verdict.md").write_text("\n".join(lines + ["", "No final run yet."]) + "\n")
        print("\n".join(lines))
        return
    lines += ["", "## Final runs", "",
             "Each arm's best configuration (selected on validation kNN), trained on the 60,000 training images "
             f"for {FINAL_EPOCHS} epochs; kNN (k = 20, bank = first 10,000 training images) and offline linear "
             "evaluation on the 10,000 test images. Written by `python benchmarks/tuned_study.py --stages verdict`.",
             "", "| arm | n | kNN top-1 | linear top-1 | final α | share dim / sample / MI | CPU |",
             "|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue

        def summary(key, digits=2):
            values = [float(r[key]) for r in mine if r[key] not in ("", None)]
            if not values:
                return "–"
            mean = sum(values) / len(values)
            if len(values) == 1:
                return f"{mean:.{digits}f}"
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            return f"{mean:.{digits}f} ± {sd:.{digits}f}"

        shares = " / ".join(summary(f"grad_share_{t}") for t in ("dim", "sample", "mi"))
        lines.append(f"| {arm} | {len(mine)} | {summary('knn_top1')} | {summary('linear_top1')} | "
                     f"{summary('final_alpha', 3)} | {shares} | {', '.join(sorted({r['cpu'] for r in mine}))} |")
    comparisons = [paired(rows, a, b, metric) for a, b in (("adadim", "vicreg"), ("adadim", "ntxent"),
                                                           ("vicreg", "ntxent"))
                   for metric in ("knn_top1", "linear_top1")]
    comparisons = [c for c in comparisons if c is not None]
    if comparisons:
        from adadim_dist.compare import holm_adjust

        for c, adjusted in zip(comparisons, holm_adjust([c["p"] for c in comparisons])):
            c["p_holm"] = adjusted
        lines += ["", f"Paired by seed (same CPU model only); {len(comparisons)} comparisons, p-values Holm-adjusted "
                  "over all of them.", "",
                  "| comparison | metric | n | mean difference | 95 % CI | p | p (Holm) |",
                  "|---|---|---|---|---|---|---|"]
        for c in comparisons:
            lines.append(f"| {c['first']} − {c['second']} | {c['metric']} | {c['n']} | {c['mean']:+.2f} | "
                         f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] | {c['p']:.3f} | {c['p_holm']:.3f} |")
    markers_rows = read_rows(out / "markers.csv")
    if markers_rows:
        lines += ["", "Scale markers (same bank, test set and linear evaluation):", "",
                  "| marker | seed | kNN top-1 | linear top-1 | CPU |", "|---|---|---|---|---|"]
        lines += [f"| {r['marker']} | {r['seed']} | {float(r['knn_top1']):.2f} | {float(r['linear_top1']):.2f} | "
                  f"{r['cpu']} |" for r in markers_rows]
    (out / "verdict.md").write_text("\n".join(lines) + "\n")
    (out / "verdict.json").write_text(json.dumps({"comparisons": comparisons}, indent=1))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["tune", "final", "markers", "verdict"],
                        choices=["tune", "final", "markers", "verdict"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "tuned-study")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"commit {git_commit()} on {machine()}; results in {args.out}")
    tuned = {}
    if "tune" in args.stages or "final" in args.stages:
        tuned = {arm: tune_arm(arm, args.out) for arm in ARMS}
    if "final" in args.stages:
        final_runs(tuned, args.seeds[:1], args.out)  # seed 0 of every arm first, then the markers
    if "markers" in args.stages:
        markers(args.out, args.seeds)
    if "final" in args.stages:
        final_runs(tuned, args.seeds, args.out)
    if "verdict" in args.stages:
        verdict(args.out)
    emit({"stages": args.stages, "out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
