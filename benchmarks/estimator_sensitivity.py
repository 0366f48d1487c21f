"""How α and I(R;Z) of finished runs depend on the estimator's choices, without retraining.

For every finished training run of an MLflow experiment (a study's trials), the encoder and projector of the
run's last complete checkpoint embed the first ``--images`` test images (centre view, BatchNorm in eval mode);
R and Z are saved under ``--out/embeddings/`` and reused on a re-run. On those embeddings, split into disjoint
batches of N images, it computes α = clip(erank(Z)/min(N, D), 0, 1) (the default normalisation; the history-
based ones need a training trajectory) and H(R), I(R;Z) for each Rényi order (1, 2, 3), kernel (cosine;
Gaussian with the median-heuristic width) and batch size N (128 to 1024), averaged over the batches. Writes
``estimator_sensitivity.csv`` (one row per run × setting), ``estimator_sensitivity.md`` (mean ± std over
each variant's seeds) and ``estimator_sensitivity.png``, and prints one JSON line.

    python benchmarks/estimator_sensitivity.py --experiment adadim-study [--storage-path runs]
        [--images 2048] [--batch-sizes 128 256 512 1024] [--out reports/adadim-study/estimators]

The embeddings are the evaluation's (centre view, BatchNorm running statistics), not the training step's (two
augmented views, batch statistics), so their H(R), I(R;Z) and α are on a different scale from the logged
training values: compare settings with each other, and variants within one setting.

Needs nothing beyond what every training run keeps: its run directory ``<storage>/<run name>/epoch_NNNN``
(DDP checkpoints: ``model.pt`` and ``state.pt`` with the resolved config) and the test .beton file.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
from pathlib import Path

import torch

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

ORDERS = (1.0, 2.0, 3.0)
KERNELS = ("cosine", "gaussian")


def finished_runs(tracking_uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"estimator_sensitivity: error: --experiment: no MLflow experiment named {experiment!r}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000)
    return [r for r in runs if "info/h_r" in r.data.metrics]


def embed(run_dir: Path, images: int) -> dict[str, torch.Tensor]:
    """R, Z and labels of the first ``images`` test images under the run's last complete checkpoint."""
    from adadim_dist.config import config_from_dict
    from adadim_dist.data import build_eval_loader
    from adadim_dist.distributed.engine import MODEL_STATE
    from adadim_dist.models import build_model
    from adadim_dist.training.checkpoint import latest_complete_checkpoint, load_state

    checkpoint = latest_complete_checkpoint(run_dir, "ddp")
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no complete DDP checkpoint")
    cfg = config_from_dict(load_state(checkpoint)["config"])
    model = build_model(cfg.model)
    model.load_state_dict(torch.load(checkpoint / MODEL_STATE, map_location="cpu", weights_only=True))
    model.eval()
    loader = build_eval_loader(cfg.data, cfg.data.test_path, 512, rank=0, world_size=1, distributed=False)
    rs, zs, labels, seen = [], [], [], 0
    try:
        with torch.no_grad():
            for batch, targets in loader:
                r, z, _ = model(batch.float())
                rs.append(r.clone())
                zs.append(z.clone())
                labels.append(targets.reshape(-1).clone())
                seen += batch.shape[0]
                if seen >= images:
                    break
    finally:
        loader.close()
    return {"r": torch.cat(rs)[:images], "z": torch.cat(zs)[:images], "labels": torch.cat(labels)[:images],
            "checkpoint": str(checkpoint)}


def sensitivity(r: torch.Tensor, z: torch.Tensor, batch_sizes: list[int]) -> list[dict]:
    """α, H(R) and I(R;Z) per (N, order, kernel), each the mean over the disjoint batches of N rows."""
    from adadim_dist.objectives import adaptive_alpha, information_terms

    rows = []
    r, z = r.double(), z.double()
    for n in batch_sizes:
        batches = [(r[i : i + n], z[i : i + n]) for i in range(0, r.shape[0] - n + 1, n)]
        if not batches:
            continue
        alpha = statistics.fmean(adaptive_alpha(zb).item() for _, zb in batches)
        for order, kernel in itertools.product(ORDERS, KERNELS):
            terms = [information_terms(rb, zb, order, kernel) for rb, zb in batches]
            rows.append({"batch": n, "order": order, "kernel": kernel, "batches": len(batches), "alpha": alpha,
                         "h_r": statistics.fmean(t["h_x"].item() for t in terms),
                         "mi_rz": statistics.fmean(t["mi"].item() for t in terms)})
    return rows


def summarise(rows: list[dict]) -> str:
    """Markdown: per variant and setting, mean ± std of α and I(R;Z) over the variant's seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["batch"], row["order"], row["kernel"]), []).append(row)
    lines = ["| variant | N | order | kernel | α | H(R) | I(R;Z) | n |", "|---|---|---|---|---|---|---|---|"]
    for (variant, n, order, kernel), members in sorted(groups.items()):
        cells = []
        for key in ("alpha", "h_r", "mi_rz"):
            values = [m[key] for m in members]
            std = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{statistics.fmean(values):.3f} ± {std:.3f}" if not math.isnan(std)
                         else f"{values[0]:.3f} ± –")
        lines.append(f"| {variant} | {n} | {order:g} | {kernel} | {' | '.join(cells)} | {len(members)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r["variant"] for r in rows})
    fig, axes = plt.subplots(2, len(ORDERS) + 1, figsize=(5 * (len(ORDERS) + 1), 8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for row_index, kernel in enumerate(KERNELS):
        for col, order in enumerate(ORDERS):
            ax = axes[row_index][col]
            for index, variant in enumerate(variants):
                points = sorted((r["batch"], r["mi_rz"]) for r in rows
                                if r["variant"] == variant and r["order"] == order and r["kernel"] == kernel)
                means = _mean_by_x(points)
                ax.plot(list(means), list(means.values()), "o-", color=colours(index % 10), label=variant)
            ax.set_title(f"I(R;Z), order {order:g}, {kernel}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size N")
            ax.grid(alpha=0.3)
        ax = axes[row_index][-1]
        if row_index == 0:
            for index, variant in enumerate(variants):
                means = _mean_by_x(sorted((r["batch"], r["alpha"]) for r in rows
                                          if r["variant"] == variant and r["order"] == 2.0 and r["kernel"] == "cosine"))
                ax.plot(list(means), list(means.values()), "o-", color=colours(index % 10), label=variant)
            ax.set_title("α = erank(Z) / min(N, D)")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size N")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.axis("off")
    fig.suptitle("Estimator sensitivity on saved embeddings (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_by_x(points: list[tuple[float, float]]) -> dict[float, float]:
    by_x: dict[float, list[float]] = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    return {x: statistics.fmean(ys) for x, ys in sorted(by_x.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--storage-path", type=Path, default=Path("runs"))
    parser.add_argument("--tracking-uri", help="default: sqlite under --storage-path")
    parser.add_argument("--images", type=int, default=2048, help="test images embedded per run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--out", type=Path, default=Path("reports/estimators"))
    args = parser.parse_args(argv)
    if args.images < max(args.batch_sizes):
        print(f"estimator_sensitivity: error: --images: {args.images} is fewer than the largest batch size "
              f"{max(args.batch_sizes)}", file=sys.stderr)
        return 2
    from adadim_dist.training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    runs = finished_runs(uri, args.experiment)
    if not runs:
        print(f"estimator_sensitivity: error: --experiment: no finished training runs in {args.experiment!r}",
              file=sys.stderr)
        return 2
    (args.out / "embeddings").mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        saved = args.out / "embeddings" / f"{run.info.run_id}.pt"
        if saved.is_file():
            embeddings = torch.load(saved, weights_only=True)
        else:
            embeddings = embed(args.storage_path.resolve() / run.info.run_name, args.images)
            torch.save(embeddings, saved)
        variant = run.data.params.get("study.variant", run.info.run_name)
        seed = run.data.params.get("training.seed", "")
        for row in sensitivity(embeddings["r"], embeddings["z"], args.batch_sizes):
            rows.append({"variant": variant, "seed": seed, "run_id": run.info.run_id, **row})
        print(f"[estimators] {variant} seed {seed}: done", flush=True)
    with (args.out / "estimator_sensitivity.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows)
    (args.out / "estimator_sensitivity.md").write_text(table)
    plot(rows, args.out / "estimator_sensitivity.png")
    print(table)
    emit({"benchmark": "estimator_sensitivity", "experiment": args.experiment, "runs": len(runs),
          "images": args.images, "batch_sizes": args.batch_sizes, "orders": list(ORDERS), "kernels": list(KERNELS),
          "out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
