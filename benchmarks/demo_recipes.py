"""Augmentation and batch recipes for the demo, compared by kNN top-1 after the same training budget.

Each variant is the real entry point (``python -m adadim_dist.run``) on ``configs/fmnist_smoke.yaml`` with a
few overrides, for ``--epochs`` epochs (the LR schedule spans them), evaluated with the demo's kNN (k=20, the
first 20,000 training images as the bank, the 10,000 test images as queries). Variants run one after the
other on the whole machine; one JSON line with every variant's kNN, probe and wall time at the end.

    python benchmarks/demo_recipes.py [--epochs 1] [--variants lr0.3 lr0.3_light lr0.3_batch128 lr0.6 lr1.2]
        [key=value ...]

Trailing ``key=value`` overrides apply to every variant (``model.small_cnn_downsample=maxpool`` reproduces
the table made before the demo switched to the strided CNN).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

REPO = Path(__file__).resolve().parents[1]

# Fashion-MNIST is grey: hue, saturation and grayscale do nothing to it, so "light" drops them, drops
# solarization, and keeps more of each garment in the crop.
_LIGHT_VIEW = "{crop_scale: [0.35, 1.0], saturation: 0.0, hue: 0.0, grayscale_prob: 0.0, solarize_prob: 0.0}"
# Every variant names its learning rate, so results do not depend on what the shipped config says today.
VARIANTS = {
    "lr0.3": ["optim.lr=0.3"],
    "lr0.3_light": ["optim.lr=0.3", f"data.view_a={_LIGHT_VIEW}", f"data.view_b={_LIGHT_VIEW}"],
    "lr0.3_batch128": ["optim.lr=0.3", "training.global_batch_size=128"],
    "lr0.6": ["optim.lr=0.6"],
    "lr1.2": ["optim.lr=1.2"],
}


def run_variant(name: str, epochs: int, storage: Path, common: list[str]) -> dict:
    args = [sys.executable, "-m", "adadim_dist.run", "--config", "configs/fmnist_smoke.yaml",
            *common, *VARIANTS[name], f"training.epochs={epochs}", "eval.baselines=false",
            f"run.storage_path={storage}", f"run.name={name}", "tracking.experiment=demo-recipes"]
    print(f"[bench] {name}: {' '.join(VARIANTS[name])}", file=sys.stderr, flush=True)
    started = time.time()
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"knn_top1": summary["knn_top1"], "probe_top1": round(summary["probe_top1"], 2),
              "final_alpha": round(summary["final_alpha"], 3), "wall_s": round(time.time() - started)}
    print(f"[bench] {name}: {result}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant, key.sub=value")
    args = parser.parse_intermixed_args()
    with tempfile.TemporaryDirectory() as storage:
        results = {name: run_variant(name, args.epochs, Path(storage), args.overrides) for name in args.variants}
    emit({"benchmark": "demo_recipes", "epochs": args.epochs, "common_overrides": args.overrides,
          "overrides": {n: VARIANTS[n] for n in args.variants}, "results": results})


if __name__ == "__main__":
    main()
