"""Dimensional collapse and data imbalance on Fashion-MNIST, run and reported by the service (issue 16).

    python benchmarks/collapse_study.py run       # the four studies below, one after another (resumable)
    python benchmarks/collapse_study.py report    # tables + figures → results/collapse-study/, one JSON line

``run`` calls ``python -m adadim_dist.tune --config F`` for each study file, so each is a normal Ray Tune
study: running it again resumes it (finished trials are kept). ``report`` reads the finished MLflow runs:

* collapse grid (experiment ``collapse-study``; ``configs/study/collapse_fmnist_{weak,strong}.yaml``):
  VICReg, NT-Xent and AdaDim × weight decay {1e-5, 1e-3, 1e-1} × weak / strong views, one seed. Per run: kNN
  top-1 and the collapsed dimensions of R (512) and Z (512) on the 10,000 test embeddings (singular values
  below 1e-3 of the largest, ``adadim_dist.objectives.spectrum``), plus the effective rank of Z at the end
  of training (``info/erank_z``, on the training batch);
* imbalance (experiment ``longtail-study``; ``configs/study/longtail_fmnist.yaml`` and its balanced control
  ``longtail_balanced_fmnist.yaml``): the three objectives × seeds 0, 1 on a long-tailed (ratio 10) and on a
  balanced training set of the same size; kNN on the balanced test set.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDIES = [
    "configs/study/collapse_fmnist_weak.yaml",
    "configs/study/collapse_fmnist_strong.yaml",
    "configs/study/longtail_fmnist.yaml",
    "configs/study/longtail_balanced_fmnist.yaml",
]


def run_studies() -> int:
    failed = []
    for index, study in enumerate(STUDIES, 1):
        print(f"[{index}/{len(STUDIES)}] python -m adadim_dist.tune --config {study}", flush=True)
        code = subprocess.call([sys.executable, "-m", "adadim_dist.tune", "--config", study], cwd=REPO)
        if code != 0:  # the next study still runs; running this script again resumes the failed one
            print(f"[{index}/{len(STUDIES)}] {study}: exit {code}", flush=True)
            failed.append(study)
    print("done" if not failed else f"failed: {', '.join(failed)} (run again to resume)", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--storage-path", default="runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "collapse-study")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_studies()
    return report(args)


def report(args) -> int:
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
