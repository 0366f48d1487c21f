"""The per-step gradient finiteness check: one fused norm pass (the service's ``gradients_finite``) against an
elementwise ``isfinite`` of every gradient (the check before `9624457`).

The model of ``configs/fmnist_smoke.yaml`` with random gradients, one torch thread (as each of the demo's two
workers has); both checks alternate in one process after the same warm-up; medians.

    python benchmarks/finiteness_check.py [--calls 200] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from adadim_dist.config import load_config
from adadim_dist.distributed.engine import gradients_finite
from adadim_dist.models import build_model

try:
    from _common import alternating_medians, emit
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(load_config("configs/fmnist_smoke.yaml", []).model)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    grads = [p.grad for p in model.parameters()]

    def elementwise() -> bool:
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    medians = alternating_medians({"fused_norms": lambda: gradients_finite(model), "elementwise": elementwise},
                                  timed=args.calls, warmup=20)
    emit({"benchmark": "finiteness_check", "parameters": sum(g.numel() for g in grads), "tensors": len(grads),
          "fused_norms_ms": round(medians["fused_norms"] * 1e3, 3),
          "elementwise_ms": round(medians["elementwise"] * 1e3, 3),
          "speedup": round(medians["elementwise"] / medians["fused_norms"], 1)})


if __name__ == "__main__":
    main()
