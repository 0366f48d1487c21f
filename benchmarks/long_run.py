"""A longer CPU run of the embedded default: when does the trained encoder pass raw-pixel kNN?

Runs ``python -m adadim_dist.run --config configs/fmnist_smoke.yaml`` for ``--epochs`` epochs (the cosine
schedule spans all of them) with kNN after every epoch, then reads the per-epoch kNN top-1 (k=20, the demo's
bank of the first 20,000 training images) and the two baselines from MLflow, prints one JSON line with the
first epoch (and wall-clock minute) at which the trained encoder beats raw pixels, and draws the curve.

    python benchmarks/long_run.py [--epochs 10] [--plot benchmarks/results/long_run_knn.png] [key=value ...]

Trailing ``key=value`` overrides apply to the run (e.g. ``model.small_cnn_downsample=maxpool`` reproduces the
runs made before the demo switched to the strided CNN).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--name", default="long-run")
    parser.add_argument("--storage", default="runs")
    parser.add_argument("--plot", default="benchmarks/results/long_run_knn.png")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_intermixed_args()

    started = time.time()
    command = [sys.executable, "-m", "adadim_dist.run", "--config", "configs/fmnist_smoke.yaml", "--fresh",
               f"training.epochs={args.epochs}", "eval.every_epochs=1", f"run.name={args.name}",
               f"run.storage_path={args.storage}", *args.overrides]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in process.stdout:  # progress as it comes
        lines.append(line)
        if "done in" in line or "error" in line.lower():
            print(line.rstrip()[-160:], file=sys.stderr, flush=True)
    if process.wait() != 0:
        raise SystemExit("".join(lines[-40:]))
    wall = time.time() - started
    summary = json.loads(lines[-1])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    run_id = summary["run_id"]
    knn = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "knn/top1_k20"))
    seconds = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/epoch_seconds"))
    pixels, random_encoder = summary["knn_top1_raw_pixels"], summary["knn_top1_random_encoder"]
    passed = next((epoch for epoch, value in knn if value > pixels), None)
    training_minutes = {epoch: sum(s for e, s in seconds if e <= epoch) / 60 for epoch, _ in knn}

    plot = Path(args.plot)
    plot.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot([e for e, _ in knn], [v for _, v in knn], marker="o", label="trained encoder (AdaDim)")
    ax.axhline(pixels, color="k", linestyle="--", label=f"raw pixels ({pixels:.2f}%)")
    ax.axhline(random_encoder, color="gray", linestyle=":", label=f"random encoder ({random_encoder:.2f}%)")
    ax.set_xlabel("epoch (Fashion-MNIST, CPU)")
    ax.set_ylabel("kNN top-1 (%), k=20")
    ax.set_title(f"smoke config for {args.epochs} epochs ({wall / 60:.0f} min on this machine)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=120)

    emit({
        "benchmark": "long_run",
        "epochs": args.epochs,
        "wall_s": round(wall),
        "knn_top1_by_epoch": {epoch: value for epoch, value in knn},
        "knn_top1_raw_pixels": pixels,
        "knn_top1_random_encoder": random_encoder,
        "probe_top1": summary["probe_top1"],
        "first_epoch_above_pixels": passed,
        "training_minutes_to_pass": round(training_minutes[passed], 1) if passed else None,
        "plot": str(plot),
    })


if __name__ == "__main__":
    main()
