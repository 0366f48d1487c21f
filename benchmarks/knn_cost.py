"""The demo's kNN evaluation: one similarity product per k against one for all k, side by side.

    python benchmarks/knn_cost.py [--bank 20000] [--queries 10000] [--dim 512] [--repeats 3]

Random features of the demo's shape (bank 20,000 × 512, 10,000 queries, k = 20 and 200, 10 classes), one
torch thread as rank 0 has. "per k" calls ``knn_top1`` once per k (the evaluation before 2026-12-03), "all k"
calls ``knn_top1_for_each_k`` once; the two alternate, and each reports its median seconds. Both give the same
accuracies (checked here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adadim_dist.training.evaluation import knn_top1, knn_top1_for_each_k  # noqa: E402

try:
    from _common import alternating_medians, emit
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bank, bank_labels = torch.randn(args.bank, args.dim), torch.randint(0, 10, (args.bank,))
    queries, query_labels = torch.randn(args.queries, args.dim), torch.randint(0, 10, (args.queries,))
    ks = (20, 200)
    per_k = {k: knn_top1(bank, bank_labels, queries, query_labels, k) for k in ks}
    assert knn_top1_for_each_k(bank, bank_labels, queries, query_labels, ks) == per_k
    medians = alternating_medians({
        "per_k": lambda: [knn_top1(bank, bank_labels, queries, query_labels, k) for k in ks],
        "all_k": lambda: knn_top1_for_each_k(bank, bank_labels, queries, query_labels, ks),
    }, timed=args.repeats, warmup=1)
    emit({"benchmark": "knn_cost", "bank": args.bank, "queries": args.queries, "dim": args.dim, "ks": list(ks),
          "per_k_s": round(medians["per_k"], 2), "all_k_s": round(medians["all_k"], 2),
          "ratio": round(medians["all_k"] / medians["per_k"], 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
